"""Ctrl-C and SIGTERM during a run: the first asks the loop to stop, a second Ctrl-C leaves at
once (not under torchrun), more SIGTERMs are ignored, and the handlers are given back after."""

import os
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from ptblm.signals import StopOnSignal


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_the_first_signal_asks_the_loop_to_stop(signum, code):
    outside = signal.getsignal(signum)
    if signum == signal.SIGHUP:  # as in a terminal: under `nohup make test` it arrives ignored
        signal.signal(signum, signal.SIG_DFL)
    try:
        before = signal.getsignal(signum)
        with StopOnSignal() as stop:
            assert not stop()
            signal.raise_signal(signum)
            assert stop() and stop.name == signal.Signals(signum).name and stop.exit_code == code
        assert signal.getsignal(signum) is before
    finally:
        signal.signal(signum, outside)


def test_a_hangup_that_nohup_ignores_stays_ignored():
    """`nohup ptblm train ...`: the terminal closing must not stop the run."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            signal.raise_signal(signal.SIGHUP)
            assert not stop()
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_sigterm_ignored_by_the_parent_still_stops_the_run_and_saves():
    """Only nohup's ignored SIGHUP is kept: a supervisor that ignores SIGTERM for itself (and so
    for its children) still preempts with one, and the run must save before it is killed."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with StopOnSignal() as stop:
            signal.raise_signal(signal.SIGTERM)
            assert stop() and stop.exit_code == 143
    finally:
        signal.signal(signal.SIGTERM, before)


def test_more_sigterms_are_ignored():
    """A preempting scheduler may send SIGTERM several times: the run still stops cleanly."""
    with StopOnSignal() as stop:
        for _ in range(3):
            signal.raise_signal(signal.SIGTERM)
        assert stop.name == "SIGTERM" and stop.exit_code == 143


def test_a_run_stopped_with_its_message_to_say_outlives_more_sigterms():
    """After the stop, until it exits: torchrun SIGTERMs rank 0 once another rank has exited, and
    rank 0 must still print how to continue (a process of its own: no handler changes here)."""
    script = (
        "import os, signal\n"
        "from ptblm.signals import ignore_termination\n"
        "ignore_termination()\n"
        "for signum in (signal.SIGTERM, signal.SIGHUP):\n"
        "    os.kill(os.getpid(), signum)\n"
        "print('Continue with: ptblm train --resume runs/x')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (0, "Continue with: ptblm train --resume runs/x\n")


def test_under_torchrun_a_second_ctrl_c_does_not_quit():
    """torchrun forwards the terminal's Ctrl-C: each worker hears it twice within milliseconds."""
    with StopOnSignal(exit_on_second=False) as stop:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        assert stop.name == "SIGINT"


def test_a_second_ctrl_c_quits_at_once_with_130():
    script = (
        "import signal, sys, time\n"
        "from ptblm.signals import StopOnSignal\n"
        "with StopOnSignal(announce=True) as stop:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    print('asked to stop', stop(), flush=True)\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    print('still here', flush=True)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert result.returncode == 130
    assert result.stdout == "asked to stop True\n"
    assert "SIGINT: stopping after this window (Ctrl-C again to quit at once)..." in result.stderr


def test_every_rank_stops_on_the_answer_the_ranks_agreed_on():
    """A SIGTERM that lands on one rank while it waits in the all-reduce is heard after the call
    returns: that rank must still act on the agreed "no" (acting on its own "yes" left it saving
    alone while the others trained on, and both hung), and say "yes" at the next window."""
    stop = StopOnSignal()

    def others_said_no_while_the_signal_landed(flag, device):
        stop.received = signal.SIGTERM
        return False

    cpu = torch.device("cpu")
    assert stop.agreed(SimpleNamespace(any=others_said_no_while_the_signal_landed), cpu) is False
    assert stop.agreed(SimpleNamespace(any=lambda flag, device: flag), cpu) is True
    # Signalled elsewhere only: this rank stops too, as if it had had a SIGTERM.
    elsewhere = StopOnSignal()
    assert elsewhere.agreed(SimpleNamespace(any=lambda flag, device: True), cpu) is True
    assert elsewhere.name == "SIGTERM"
