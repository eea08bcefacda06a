import json
import signal

import pytest
import torch
from helpers import make_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.errors import Interrupted
from ptblm.run_state import RunState
from ptblm.run_table import read_runs, render
from ptblm.signals import StopOnSignal
from ptblm.stall import MAX_CELL, SILENT_SHARE, STALL_WINDOWS, follow, top_layer_figures
from ptblm.step import EagerStep
from ptblm.train import Trainer

STALLED = "warning: training has stalled"


def test_the_figures_are_the_top_layers_alone():
    h = torch.zeros(2, 4, 50)  # layer 0 silent throughout: not the top layer
    c = torch.full((2, 4, 50), 1e6)
    h[1] = 0.3
    h[1, :, :40] = -0.005  # 160 of the top layer's 200 units put out about 0
    c[1] = 2.0
    c[1, 3, 7] = -250.0
    share, max_cell = top_layer_figures((h, c))
    assert share == pytest.approx(160 / 200)
    assert max_cell == 250.0


STALLED_FIGURES, HEALTHY = (0.99, 5000.0), (0.5, 3.0)


def watched(points, steps):
    """The steps at which `follow` says to warn, a log point at each step, and the run state."""
    run = RunState()
    warned = []
    for step, point in zip(steps, points, strict=True):
        run.global_step = step
        if follow(run, *point):
            warned.append(step)
    return warned, run


def test_the_watch_warns_once_when_a_stall_has_lasted_its_windows():
    points = [STALLED_FIGURES, HEALTHY] + [STALLED_FIGURES] * 4 + [HEALTHY] + [STALLED_FIGURES] * 4
    warned, run = watched(points, range(50, 50 * len(points) + 1, 50))  # a point every 50 windows
    assert warned == [150 + STALL_WINDOWS]  # the streak from 150 on; once only
    assert run.stall_warned_at == 250 and run.stalled_since == 400  # a new streak, not warned


def test_a_stall_that_ends_within_its_windows_is_not_warned_about():
    """CPU seed 6 of large: stalled at windows 35 and 42, recovered by 49 (a point every 7)."""
    points = [HEALTHY] * 4 + [STALLED_FIGURES] * 2 + [HEALTHY] * 20
    warned, run = watched(points, range(7, 7 * len(points) + 1, 7))
    assert warned == [] and run.stall_warned_at is None and run.stalled_since is None


@pytest.mark.parametrize(
    "point",
    [(SILENT_SHARE - 0.01, 5000.0), (1.0, MAX_CELL - 1), HEALTHY],
    ids=["units-speak", "cells-bounded", "healthy"],
)
def test_one_figure_within_its_limit_is_no_stall(point):
    steps = range(50, 1000, 50)
    assert watched([point] * len(steps), steps)[0] == []


def test_the_summary_says_whether_a_warned_stall_goes_on():
    points = [STALLED_FIGURES] * 4 + [HEALTHY]
    config = load_config("test")
    _, run = watched(points[:4], range(50, 201, 50))
    assert run.summary("stopped", config, 1000)["stall"] == {"warned_at_step": 150, "ongoing": True}
    run.global_step = 250
    follow(run, *HEALTHY)
    assert run.summary("stopped", config, 1000)["stall"] == {
        "warned_at_step": 150,
        "ongoing": False,
    }
    assert RunState().summary("stopped", config, 1000)["stall"] is None


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(corpus_dir=make_corpus(tmp_path / "corpus"))


def trainer(corpus, run_dir, resume=None):
    config = load_config(
        "small",
        [f"vocab_size={len(corpus.vocab)}", "hidden_size=8", "num_steps=5", "batch_size=4"],
    )
    return Trainer(
        config, corpus, run_dir, torch.device("cpu"), max_steps=200, eval_tokens=400,
        verbose=False, resume=resume,
    )  # fmt: skip


def scalars(run_dir):
    """The steps of the training points, and each point's top_silent and top_max_cell."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    silent, max_cell = (events.Scalars(f"train/{tag}") for tag in ("top_silent", "top_max_cell"))
    return [e.step for e in silent], [e.value for e in silent], [e.value for e in max_cell]


@pytest.fixture
def silenced(monkeypatch):
    """Every training window leaves the state as the stalled large seeds' was: h about 0, |c| in
    the thousands."""
    step = EagerStep.__call__

    def silencing(self, x, y):
        step(self, x, y)
        h, c = self.state
        self.state = (torch.zeros_like(h), torch.full_like(c, -3000.0))

    monkeypatch.setattr(EagerStep, "__call__", silencing)


def test_a_run_whose_top_layer_goes_silent_is_warned_about_once(corpus, tmp_path, silenced, capsys):
    trainer(corpus, tmp_path / "run").run()
    steps, silent, max_cell = scalars(tmp_path / "run")
    assert len(silent) >= 3 and set(silent) == {1.0} and set(max_cell) == {3000.0}
    assert capsys.readouterr().err.count(STALLED) == 1
    # the first point at which the stall had lasted STALL_WINDOWS windows
    warned = next(step for step in steps if step - steps[0] >= STALL_WINDOWS)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stall"] == {"warned_at_step": warned, "ongoing": True}
    listing = render(read_runs(tmp_path), [], tmp_path)
    assert f"tested on 400 tokens; stalled at step {warned}" in listing


def test_a_resumed_run_goes_on_counting_the_stall(corpus, tmp_path, silenced, monkeypatch, capsys):
    whole = trainer(corpus, tmp_path / "whole")
    whole.run()
    warned = whole.run_state.stall_warned_at
    half = trainer(corpus, tmp_path / "half")
    asked = StopOnSignal.__call__

    def stopped_before_the_warning(stop):  # as a SIGTERM would be
        if half.run_state.global_step >= warned - 20:
            stop.received = signal.SIGTERM
        return stop.received is not None

    monkeypatch.setattr(StopOnSignal, "__call__", stopped_before_the_warning)
    with pytest.raises(Interrupted):
        half.run()
    monkeypatch.setattr(StopOnSignal, "__call__", asked)
    half.run_dir._lock.close()  # as the process would at its exit
    assert half.run_state.stall_warned_at is None and half.run_state.stalled_since is not None
    path = tmp_path / "half" / "last.pt"
    resumed = trainer(corpus, path.parent, resume=(load_checkpoint(path), path))
    resumed.run()
    assert resumed.run_state.stall_warned_at == warned
    assert capsys.readouterr().err.count(STALLED) == 2  # the whole run's and the resumed one's


def test_a_run_that_trains_is_not_warned_about(corpus, tmp_path, capsys):
    trainer(corpus, tmp_path / "run").run()
    _, silent, max_cell = scalars(tmp_path / "run")
    assert len(silent) >= 3 and max(max_cell) < MAX_CELL and max(silent) < SILENT_SHARE
    assert STALLED not in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["stall"] is None
