import pytest
import torch
from helpers import make_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.stall import MAX_CELL, SILENT_SHARE, STALL_WINDOWS, StallWatch, top_layer_figures
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


def test_the_watch_warns_once_when_a_stall_has_lasted_its_windows():
    watch = StallWatch()
    points = [STALLED_FIGURES, HEALTHY] + [STALLED_FIGURES] * 4 + [HEALTHY] + [STALLED_FIGURES] * 4
    steps = range(50, 50 * len(points) + 1, 50)  # a point every 50 windows
    warned = [step for step, point in zip(steps, points) if watch.warn_now(step, *point)]
    assert warned == [150 + STALL_WINDOWS]  # the streak from 150 on; once only


def test_a_stall_that_ends_within_its_windows_is_not_warned_about():
    """CPU seed 6 of large: stalled at windows 35 and 42, recovered by 49 (a point every 7)."""
    watch = StallWatch()
    points = [HEALTHY] * 4 + [STALLED_FIGURES] * 2 + [HEALTHY] * 20
    assert not any(watch.warn_now(7 * (k + 1), *point) for k, point in enumerate(points))


@pytest.mark.parametrize(
    "point",
    [(SILENT_SHARE - 0.01, 5000.0), (1.0, MAX_CELL - 1), HEALTHY],
    ids=["units-speak", "cells-bounded", "healthy"],
)
def test_one_figure_within_its_limit_is_no_stall(point):
    watch = StallWatch()
    assert not any(watch.warn_now(step, *point) for step in range(50, 1000, 50))


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(corpus_dir=make_corpus(tmp_path / "corpus"))


def short_run(corpus, run_dir):
    config = load_config(
        "small",
        [f"vocab_size={len(corpus.vocab)}", "hidden_size=8", "num_steps=5", "batch_size=4"],
    )
    trainer = Trainer(
        config, corpus, run_dir, torch.device("cpu"), max_steps=200, eval_tokens=400,
        verbose=False,
    )  # fmt: skip
    trainer.run()
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [
        [event.value for event in events.Scalars(f"train/{tag}")]
        for tag in ("top_silent", "top_max_cell")
    ]


def test_a_run_whose_top_layer_goes_silent_is_warned_about_once(
    corpus, tmp_path, monkeypatch, capsys
):
    step = EagerStep.__call__

    def silencing(self, x, y):  # as the stalled large seeds: h about 0, |c| in the thousands
        step(self, x, y)
        h, c = self.state
        self.state = (torch.zeros_like(h), torch.full_like(c, -3000.0))

    monkeypatch.setattr(EagerStep, "__call__", silencing)
    silent, max_cell = short_run(corpus, tmp_path / "run")
    assert len(silent) >= 3 and set(silent) == {1.0} and set(max_cell) == {3000.0}
    assert capsys.readouterr().err.count(STALLED) == 1


def test_a_run_that_trains_is_not_warned_about(corpus, tmp_path, capsys):
    silent, max_cell = short_run(corpus, tmp_path / "run")
    assert len(silent) >= 3 and max(max_cell) < MAX_CELL and 0 <= min(silent)
    assert STALLED not in capsys.readouterr().err
