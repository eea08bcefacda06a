"""What a run shows while it trains: TensorBoard's point spacing, the bar, plain lines in a log."""

import io
import os
import shutil
import sys

import pytest
import torch
from helpers import make_corpus

import ptblm.progress as progress
from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.progress import Progress, log_every
from ptblm.signals import StopOnSignal
from ptblm.train import Trainer


def test_a_short_run_still_gets_twenty_points_on_each_curve():
    assert log_every(100) == 5  # a 100-window smoke run: 20 points, not 2
    assert log_every(2323 * 13) == 50  # a full small run: every 50 windows, as before
    assert log_every(7) == 1


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("columns, bar", [(120, True), (0, False)], ids=["wide", "zero-width"])
def test_the_bar_ends_where_max_steps_stops_the_run_and_a_zero_width_terminal_gets_lines(
    tmp_path, monkeypatch, columns, bar
):
    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(
        shutil, "get_terminal_size", lambda fallback: os.terminal_size((columns, 0))
    )
    shown = Progress(tmp_path)
    with shown.epoch(0, 13, 2323, done=0, stop=80) as epoch_bar:
        assert epoch_bar.total == 80 and (not epoch_bar.disable) == bar
        shown.show(0, 1, 2323, ppl=900.0, wps=5000.0, lr=1.0)
    text = sys.stdout.getvalue()
    assert ("ppl=900.00" in text) == bar and ("perplexity: 900.000" in text) == (not bar)


def test_off_a_terminal_a_line_is_due_every_thirty_seconds(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    shown = Progress(tmp_path)
    with shown.epoch(0, 1, 100, done=0, stop=100):
        assert not shown.wants_figures()
        clock[0] += progress.LINE_SECONDS
        assert shown.wants_figures()
        shown.show(0, 3, 100, ppl=50.0, wps=10.0, lr=1.0)
        assert not shown.wants_figures()  # the line just printed restarts the clock


@pytest.mark.parametrize("max_steps", [100, 39], ids=["every-5th-window", "every-window"])
def test_a_log_gets_figures_from_the_first_window_on(tmp_path, monkeypatch, max_steps):
    """Whether window 1 is a TensorBoard point (runs under 40 windows log every window) or not."""
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    corpus = load_corpus(corpus_dir=make_corpus(tmp_path / "corpus"))
    config = load_config("small", ["vocab_size=40", "hidden_size=8", "num_steps=5", "batch_size=4"])
    trainer = Trainer(config, corpus, tmp_path / "run", torch.device("cpu"), max_steps=max_steps)
    assert (trainer.log_every == 1) == (max_steps == 39)
    with trainer.progress.open(config, 0):
        trainer.train_epoch(StopOnSignal())
    lines = sys.stdout.getvalue().splitlines()
    windows = trainer.windows_per_epoch
    assert lines[0].startswith(f"epoch 1 {1 / windows:.3f} perplexity:")  # after window 1


def test_a_tensorboard_write_that_fails_is_said_once_and_training_goes_on(
    tmp_path, monkeypatch, capsys
):
    """A disk full of events: the writer's thread died with a traceback, and the next add_scalar
    raised its error and ended the run mid-epoch."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    calls = []

    def full(self, *args, **kwargs):
        calls.append(args)
        raise OSError(28, "No space left on device")

    import threading

    died = []  # what a thread's death would have printed as "Exception in thread ..."
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    shown = Progress(tmp_path, verbose=False)
    with shown.open(load_config("test"), resumed_at_step=0):
        monkeypatch.setattr(RecordWriter, "write", full)  # in the writer's own thread
        shown.scalar("valid/ppl", 100.0, 1)
        shown.flush()  # hands the thread's error over
        shown.scalar("valid/ppl", 90.0, 2)  # TensorBoard is off by now: not tried again
        shown.flush()
    assert len(calls) == 1 and died == []
    said = capsys.readouterr().err
    assert said == (
        f"warning: TensorBoard events could not be written in {tmp_path} (No space left on "
        f"device): training goes on without them.\n"
    )


def test_an_event_file_that_cannot_be_started_is_said_once_and_training_goes_on(
    tmp_path, monkeypatch, capsys
):
    """A disk too full for the writer's first event (or a path too long for its file name): the
    writer's thread printed a traceback, and its error ended the run as "cannot write the
    output" before the first window."""
    import threading

    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_type))
    monkeypatch.setattr(RecordWriter, "write", full)
    shown = Progress(tmp_path, verbose=False)
    with shown.open(load_config("test"), resumed_at_step=0):
        assert shown.writer is None
        shown.scalar("valid/ppl", 100.0, 1)  # not tried
    assert died == []
    assert capsys.readouterr().err == (
        f"warning: TensorBoard events could not be written in {tmp_path} (No space left on "
        f"device): training goes on without them.\n"
    )


def test_a_closed_or_full_stdout_costs_no_epoch(tmp_path):
    """`ptblm train ... | head` or `> /dev/full`: the first failed print ended the run before its
    first checkpoint (exit 1, nothing on stderr). Now training goes on, unprinted."""
    import json
    import subprocess

    corpus = make_corpus(tmp_path / "corpus")
    args = [sys.executable, "-m", "ptblm", "train", "-c", "test", "--set", "vocab_size=40",
            "--set", "max_max_epoch=2", "--corpus", str(corpus)]  # fmt: skip
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [*args, "--name", "full"], stdout=full, stderr=subprocess.PIPE, cwd=tmp_path,
            text=True, timeout=300,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "warning: standard output failed (No space left on device): training goes on, " in (
        result.stderr
    )

    def reader_gone(*more):
        process = subprocess.Popen(
            [*args, *more], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path
        )
        process.stdout.close()  # as `| head` does once it has its lines
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr

    reader_gone("--name", "pipe")
    reader_gone("--name", "quiet", "--quiet")  # only the final summary, which fails too
    # Resumed into a closed pipe ("Resuming ..." is its first line): a run cut at 40 windows,
    # its limit lifted so that its last.pt is what a run stopped there would have saved.
    reader_gone("--name", "resumed", "--max-steps", "40")
    stopped = tmp_path / "runs" / "resumed"
    (stopped / "metrics.json").unlink()
    checkpoint = torch.load(stopped / "last.pt", weights_only=True)
    checkpoint.update(max_steps=None, finished=False)
    torch.save(checkpoint, stopped / "last.pt")
    process = subprocess.Popen(
        [sys.executable, "-m", "ptblm", "train", "--resume", str(stopped)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
    )  # fmt: skip
    process.stdout.close()
    assert process.wait(timeout=300) == 0, process.stderr.read()
    for name in ("full", "pipe", "quiet", "resumed"):
        metrics = json.loads((tmp_path / "runs" / name / "metrics.json").read_text())
        assert metrics["status"] == "finished" and not metrics["cut_short"], name


def test_an_event_file_is_made_at_the_first_event_not_before(tmp_path):
    """A resume that fails before it logs anything (a full disk) left an event file per try."""
    shown = Progress(tmp_path, verbose=False)
    with shown.open(load_config("test"), resumed_at_step=7):
        shown.flush()  # a checkpoint's flush is no event
    assert not list(tmp_path.glob("events.out.tfevents.*"))
    with shown.open(load_config("test"), resumed_at_step=7):
        shown.scalar("valid/ppl", 100.0, 8)
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
