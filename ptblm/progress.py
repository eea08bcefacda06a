"""What a run shows while it trains: TensorBoard scalars, a progress bar or plain lines, messages.

- TensorBoard: `train/loss`, `train/ppl`, `train/lr`, `train/grad_norm`, `train/wps` (and from
  the trainer, `train/top_silent` and `train/top_max_cell`: stall.py) every
  log_every(run's windows) training windows (50, or fewer for a short run; and at each epoch's
  end), `valid/ppl` per epoch, `test/ppl`, the
  config as text and the HParams entry. The x axis is the number of training windows.
- On a terminal a tqdm bar per epoch, its figures from the first window on; off one (a log file,
  a pipe, a terminal too narrow for a bar) a plain line like the tutorial's log, ten times an
  epoch and at least every LINE_SECONDS, from the first window on.

Only rank 0 shows anything: on the other ranks, and with `enabled=False`, every method is a
no-op. `verbose=False` (--quiet) keeps TensorBoard but prints nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ptblm.config import Config, config_to_yaml

LOG_EVERY = 50  # training windows between two TensorBoard points, at most
POINTS_AT_LEAST = 20  # ...but a short run still gets this many points on each curve
LINES_PER_EPOCH = 10
LINE_SECONDS = 30  # off a terminal, a plain line at least this often


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that no later print (nor Python's flush at exit) fails."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def log_every(total_windows: int) -> int:
    """Training windows between two TensorBoard points for a run of `total_windows`."""
    return max(1, min(LOG_EVERY, total_windows // POINTS_AT_LEAST))


class Progress:
    def __init__(self, run_dir: Path, enabled: bool = True, verbose: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.verbose = enabled and verbose
        self.writer = None
        self._make_writer = None  # set by open(): makes self.writer at the first event
        self.bar = None
        self._line_every = self._next_line = 1  # set per epoch
        self._last_line = time.monotonic()

    @contextlib.contextmanager
    def open(self, config: Config, resumed_at_step: int):
        """The TensorBoard run in the run directory, for the duration of the `with` block.

        On resume TensorBoard drops what the stopped process logged after the checkpoint, so no
        step appears twice.
        """
        if not self.enabled:
            yield self
            return
        from torch.utils.tensorboard import SummaryWriter  # slow to import: only when training

        purge_step = resumed_at_step + 1 if resumed_at_step else None
        hook = threading.excepthook

        def quiet_writer(args):  # its thread hands its write error to our next write: one warning
            writer_failed = type(args.thread).__name__ == "_AsyncWriterThread"
            if not (writer_failed and issubclass(args.exc_type, OSError)):
                hook(args)

        threading.excepthook = quiet_writer  # before the writer: it writes its first event at once
        # Made at the first event, so that a run that fails before it has anything to log (a
        # resume refused on a full disk) leaves no event file behind.
        self._make_writer = lambda: SummaryWriter(str(self.run_dir), purge_step=purge_step)
        try:
            if not resumed_at_step:
                text = config_to_yaml(config).replace("\n", "\n    ")
                self._log(lambda writer: writer.add_text("config", "    " + text))
            yield self
        finally:
            writer, self.writer, self._make_writer = self.writer, None, None
            if writer is not None:
                with contextlib.suppress(OSError):  # said already, where a write failed
                    writer.close()
            threading.excepthook = hook

    @contextlib.contextmanager
    def epoch(self, epoch: int, epochs: int, windows: int, done: int, stop: int):
        """A bar for 0-based `epoch` of `windows` windows, `done` of them already trained; `stop`:
        the window where the run stops in this epoch (its end, or --max-steps), the bar's total
        and ETA."""
        wide = shutil.get_terminal_size(fallback=(80, 24)).columns >= 40
        self.bar = tqdm(
            total=stop,
            initial=done,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="win",
            file=sys.stdout,
            disable=not (self.verbose and sys.stdout.isatty() and wide),
            dynamic_ncols=True,
        )
        self._last_line = time.monotonic()
        line_every = max(1, windows // LINES_PER_EPOCH)
        self._next_line = (done // line_every + 1) * line_every
        self._line_every = line_every
        with self.bar:
            yield self.bar
        self.bar = None

    def train_point(
        self, epoch: int, window: int, windows: int, step: int, first: bool = False, **scalars
    ) -> None:
        """One TensorBoard point (loss, ppl, lr, grad_norm, wps) at `step`, then the bar's figures,
        or a plain line when a tenth of the epoch has passed since the last one (or it is the
        `first` window this process trains)."""
        for name, value in scalars.items():
            self.scalar(f"train/{name}", value, step)
        if not self.bar.disable or first or window >= self._next_line or window == windows:
            self.show(epoch, window, windows, **scalars)

    def wants_figures(self) -> bool:
        """Off a terminal: has no line been printed for LINE_SECONDS? (The loop then shows the
        figures so far, between two log points.)"""
        return (
            self.verbose and self.bar.disable and time.monotonic() - self._last_line >= LINE_SECONDS
        )

    def show(self, epoch: int, window: int, windows: int, **scalars) -> None:
        """The figures on the bar, or as a plain line."""
        if not self.verbose:
            return
        ppl, wps, lr = (scalars[key] for key in ("ppl", "wps", "lr"))
        if not self.bar.disable:
            figures = {"ppl": f"{ppl:.2f}", "wps": f"{wps:.0f}", "lr": f"{lr:g}"}
            if "loss" in scalars:
                figures = {"loss": f"{scalars['loss']:.3f}", **figures}
            self.bar.set_postfix(figures)
            return
        self.say(
            f"epoch {epoch + 1} {window / windows:.3f} perplexity: {ppl:.3f} "
            f"speed: {wps:.0f} wps lr: {lr:g}"
        )
        self._last_line = time.monotonic()
        self._next_line = (window // self._line_every + 1) * self._line_every

    def scalar(self, name: str, value: float, step: int) -> None:
        self._log(lambda writer: writer.add_scalar(name, value, step))

    def flush(self) -> None:
        """What TensorBoard shows reaches the disk (with each checkpoint)."""
        if self.writer:
            self._log(lambda writer: writer.flush())

    def _log(self, write) -> None:
        """A TensorBoard write. Where it fails (a full disk), a warning and no TensorBoard from
        then on: the run's checkpoints matter more than its curves."""
        writer = self._writer()
        if not writer:
            return
        try:
            write(writer)
        except OSError as error:
            self._lost(error)

    def _writer(self):
        """The SummaryWriter, made (once) at the first event; None where there is none."""
        if self._make_writer is not None:
            make, self._make_writer = self._make_writer, None
            try:
                self.writer = make()
            except OSError as error:  # a full disk, a path too long for its file name
                self._lost(error)
        return self.writer

    def _lost(self, error: OSError) -> None:
        self.writer = None
        self.warn(
            f"TensorBoard events could not be written in {self.run_dir} ({error.strerror}): "
            f"training goes on without them."
        )

    def hparams(self, values: dict[str, Any]) -> None:
        """The HParams tab entry, written into the run itself (SummaryWriter.add_hparams would
        make a separate sub-run). Columns in the order of `values` (the caller puts what tells
        runs apart first); booleans stay booleans and strings strings (torch's own `hparams()`
        stores a bool as 0.0/1.0). Its metrics are the run's own test/valid/train ppl scalars."""
        if not self._writer():
            return
        from tensorboard.plugins.hparams import summary_v2 as api

        columns = [
            api.HParam(name, api.Discrete([False, True]) if isinstance(value, bool) else None)
            for name, value in values.items()
        ]
        metrics = [api.Metric(tag) for tag in ("test/ppl", "valid/ppl", "train/ppl")]
        summaries = (
            api.hparams_config_pb(hparams=columns, metrics=metrics),
            api.hparams_pb(values),
        )

        def write(writer) -> None:
            for summary in summaries:
                writer._get_file_writer().add_summary(summary)

        self._log(write)

    def say(self, text: str) -> None:
        """A line on stdout. Where stdout is gone (`| head` has exited, > /dev/full), the run goes
        on without printing: its epochs are worth more than its log."""
        if not self.verbose:
            return
        try:
            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()
        except OSError as error:
            self.verbose = False
            silence_stdout()
            self.warn(f"standard output failed ({error.strerror}): training goes on, unprinted.")

    def warn(self, text: str) -> None:
        """On stderr, --quiet or not (rank 0 only)."""
        if self.enabled:
            with contextlib.suppress(OSError):
                tqdm.write(f"warning: {text}", file=sys.stderr)
