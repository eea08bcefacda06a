"""Ctrl-C, SIGTERM and SIGHUP during a run: stop after the current window, keeping its work."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from ptblm.distributed import Distributed


class StopOnSignal:
    """First SIGINT/SIGTERM/SIGHUP: ask the loop to stop after the current window (it saves
    last.pt). A second SIGINT: leave at once; every file is written atomically, so nothing is
    corrupted. Further SIGTERMs are ignored: a preempting scheduler may send several. SIGHUP (the
    ssh session that ran it dropped) is taken as SIGTERM, unless it is ignored (`nohup`).

    Under torchrun a Ctrl-C reaches each worker twice within milliseconds (from the terminal and
    forwarded by torchrun), so there `exit_on_second` is off: torchrun itself escalates to
    SIGKILL if the workers do not stop in time. `announce` says on stderr that the signal was
    heard (rank 0 only), and on leaving at once, what `on_quit()` says (how to go on).
    """

    EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
    if hasattr(signal, "SIGHUP"):  # not on Windows
        EXIT_CODES[signal.SIGHUP] = 129

    def __init__(
        self,
        exit_on_second: bool = True,
        announce: bool = False,
        on_quit: Callable[[], str] | None = None,
    ):
        self.received: int | None = None
        self.exit_on_second = exit_on_second
        self.announce, self.on_quit = announce, on_quit
        self._previous = {}

    def __enter__(self):
        for signum in self.EXIT_CODES:
            if (
                signum == getattr(signal, "SIGHUP", None)
                and signal.getsignal(signum) is signal.SIG_IGN
            ):
                continue  # nohup's: the run was meant to outlive its terminal
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
            if self.announce:
                again = " (Ctrl-C again to quit at once)" if self.exit_on_second else ""
                name = signal.Signals(signum).name
                self._say(f"\n{name}: stopping after this window{again}...\n")
        elif signum == signal.SIGINT and self.exit_on_second:
            if self.announce and self.on_quit is not None:
                self._say(f"\nSIGINT: quit at once. {self.on_quit()}\n")
            os._exit(self.EXIT_CODES[signum])

    @staticmethod
    def _say(text: str) -> None:
        # os.write, not print: a handler may run in the middle of another print. A terminal
        # that hung up fails it: the run stops (and saves) all the same.
        with contextlib.suppress(OSError):
            os.write(2, text.encode())

    def __call__(self) -> bool:
        return self.received is not None

    def agreed(self, dist: Distributed, device: torch.device) -> bool:
        """Has this process, or under torchrun any rank, been asked to stop? The same answer on
        every rank, the agreed one: a signal that lands during the all-reduce counts at the next
        window (a rank acting on its own answer saved alone while the others trained on)."""
        agreed = dist.any(self(), device)
        if agreed and not self():
            self.received = signal.SIGTERM  # another rank was signalled: stop together
        return agreed

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name

    @property
    def exit_code(self) -> int:
        return self.EXIT_CODES[self.received]


def ignore_termination() -> None:
    """For a torchrun worker about to exit with its message: a SIGTERM or SIGHUP from now on must
    not cut that message off. The first rank to exit makes torchrun SIGTERM the others, and rank
    0, which saves and speaks last, would die silent. (torchrun's SIGKILL, 30 s later, and Ctrl-C
    still end a worker that hangs.)"""
    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None:
            signal.signal(signum, signal.SIG_IGN)
