"""A run's state apart from its tensors: how it was started, where it stands, its sums, its best
epoch, its history and its clock. The Trainer holds one RunState; every checkpoint saves it
(its fields are top-level keys of the checkpoint, checkpoint.py) and a resumed run restores it,
so that it continues exactly; summary.json is written from it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ptblm.config import Config, model_variant
from ptblm.errors import quote
from ptblm.model import perplexity
from ptblm.published import published_row
from ptblm.run_files import strict

# Fields a checkpoint of an older ptblm may lack, and what they meant then.
OPTIONAL = {
    "config_name": None, "max_steps": None, "eval_tokens": None, "interval_seconds": 0.0,
    "stalled_since": None, "stall_warned_at": None, "windows_by_threads": {},
}  # fmt: skip
# Float fields that may be inf or NaN; the others (sums of losses, seconds) are finite and >= 0.
# A ppl may be inf; under AMP on CUDA a gradient norm that overflowed (the GradScaler skips the
# window) is inf or NaN, and so is the interval's sum of norms.
UNBOUNDED = ("best_valid_ppl", "norm_sum")


def _fits(entry: dataclasses.Field, value: Any) -> bool:
    """Is `value` of the kind the field's default is (a limit: None or an integer >= 1)?"""
    if entry.name in OPTIONAL and OPTIONAL[entry.name] is None:  # a step, a limit or a name
        kind = str if entry.name == "config_name" else int
        return value is None or (type(value) is kind and (kind is str or value >= 1))
    default = entry.default_factory() if entry.default is dataclasses.MISSING else entry.default
    if isinstance(default, dict):  # windows_by_threads
        return isinstance(value, dict) and all(
            type(key) is str and key.isdigit() and type(count) is int and count >= 0
            for key, count in value.items()
        )
    if isinstance(default, list):
        return isinstance(value, list) and all(isinstance(item, dict) for item in value)
    if isinstance(default, float):
        return type(value) in (int, float) and (entry.name in UNBOUNDED or 0 <= value < math.inf)
    return type(value) is type(default)


@dataclass
class RunState:
    # how the run was started: kept by a resumed run
    config_name: str | None = None  # the --config it was started with
    max_steps: int | None = None  # --max-steps: stop after this many windows in total
    eval_tokens: int | None = None  # --eval-tokens: validate and test on a prefix (a smoke run)
    # where the run stands
    epoch: int = 0  # epochs completed: 0-based epoch of the next window
    window: int = 0  # index in that epoch of the next window (0: epoch boundary)
    global_step: int = 0  # training windows done in total
    finished: bool = False  # training done; only the final test (and metrics) remain
    # the current epoch's running sums (nats and tokens of all ranks), and their values at the
    # last TensorBoard point with the gradient norms summed since, so that the next point covers
    # the same windows as in an uninterrupted run
    train_nll: float = 0.0
    train_tokens: int = 0
    logged_nll: float = 0.0
    logged_tokens: int = 0
    norm_sum: float = 0.0
    interval_seconds: float = 0.0  # training time of those windows banked at a checkpoint
    # the best epoch so far and one entry per finished epoch
    best_valid_ppl: float = math.inf
    best_step: int = -1  # global_step of best.pt (-1: none yet)
    history: list[dict[str, Any]] = field(default_factory=list)
    # a stalled start (stall.py): the step of the current streak's first stalled log point, and
    # the step at which the run was warned about it
    stalled_since: int | None = None
    stall_warned_at: int | None = None
    # the clock, across resumes
    train_seconds: float = 0.0  # time spent in training windows (evaluation excluded)
    timed_tokens: int = 0  # training tokens processed in that time
    wall_seconds: float = 0.0  # wall-clock time of the run so far
    # CPU threads torch computed with ("2") -> training windows trained so: with the count
    # adapted to the load (runtime.Threads), sums round differently from one run to the next
    windows_by_threads: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> RunState:
        """The state a checkpoint saved (KeyError names a missing field)."""
        names = [entry.name for entry in dataclasses.fields(cls) if entry.name not in OPTIONAL]
        values = {name: checkpoint[name] for name in names}
        values.update(
            {name: copy.copy(checkpoint.get(name, default)) for name, default in OPTIONAL.items()}
        )
        for name, value in values.items():
            if not _fits(cls.__dataclass_fields__[name], value):
                # a damaged or crafted file: it failed deep inside training, or ran on silently
                raise ValueError(f"its {name} is {quote(value)}")
        return cls(**values)

    def start_epoch(self) -> None:
        """Zero the epoch's running sums (at its first window, not when resuming inside it)."""
        self.train_nll = self.logged_nll = self.norm_sum = self.interval_seconds = 0.0
        self.train_tokens = self.logged_tokens = 0

    def add_windows(self, trained: list[tuple[float, float]], tokens_per_window: int) -> None:
        """Add each trained window's (mean per-token NLL, gradient norm before clipping);
        `tokens_per_window` counts the tokens of all ranks."""
        for mean_nll, grad_norm in trained:
            self.train_nll += mean_nll * tokens_per_window
            self.train_tokens += tokens_per_window
            self.norm_sum += grad_norm

    def train_ppl(self) -> float:
        """The training perplexity of the epoch so far (dropout on)."""
        return perplexity(self.train_nll, self.train_tokens)

    def interval_tokens(self) -> int:
        """Training tokens since the last log point."""
        return self.train_tokens - self.logged_tokens

    def bank_interval_time(self, seconds: float) -> None:
        """Keep `seconds` of training since the last log point in the state a checkpoint saves:
        a run resumed from it times those windows too (without it, they counted as trained in
        no time, and the first speed after a resume was many times the real one)."""
        self.interval_seconds += seconds

    def interval_wps(self, seconds: float) -> float:
        """Words/s since the last log point, `seconds` of them not banked yet."""
        return self.interval_tokens() / max(self.interval_seconds + seconds, 1e-9)

    def close_interval(
        self, seconds: float, tokens_per_window: int, threads: int
    ) -> dict[str, float]:
        """Count the windows since the last log point as `seconds` of training (and any banked),
        trained with `threads` CPU threads, and start the next interval; return their loss, the
        epoch's ppl so far, their mean gradient norm and wps."""
        tokens = self.interval_tokens()
        windows = tokens // tokens_per_window
        figures = {
            "loss": (self.train_nll - self.logged_nll) / tokens,
            "ppl": self.train_ppl(),
            "grad_norm": self.norm_sum / windows,
            "wps": self.interval_wps(seconds),
        }
        key = str(threads)
        self.windows_by_threads[key] = self.windows_by_threads.get(key, 0) + windows
        self.train_seconds += self.interval_seconds + seconds
        self.timed_tokens += tokens
        self.logged_nll, self.logged_tokens, self.norm_sum = self.train_nll, self.train_tokens, 0.0
        self.interval_seconds = 0.0
        return figures

    def end_epoch(
        self,
        learning_rate: float,
        valid_ppl: float,
        complete: bool,
        epochs: int,
        windows_per_epoch: int,
    ) -> bool:
        """After validation: add the epoch to the history (its trained part, if --max-steps cut
        it short), move to the next epoch if this one is `complete`, mark the run finished after
        `epochs` or at --max-steps, and return whether this validation is the best so far (the
        caller saves best.pt)."""
        self.history.append(
            {
                "epoch": self.epoch + 1,
                "learning_rate": learning_rate,
                "windows": self.window,
                "train_ppl": self.train_ppl(),
                "valid_ppl": valid_ppl,
            }
        )
        if complete:
            self.epoch, self.window = self.epoch + 1, 0
        self.finished = self.epoch >= epochs or self.windows_left(windows_per_epoch) == 0
        best = self.best_step < 0 or valid_ppl < self.best_valid_ppl
        if best:
            self.best_valid_ppl, self.best_step = valid_ppl, self.global_step
        return best

    def windows_left(self, windows_per_epoch: int) -> int:
        """Windows to train in the current epoch: to its end, or to --max-steps if that comes
        first. The one place where --max-steps is decided; 0 once it is reached."""
        left = windows_per_epoch - self.window
        if self.max_steps is not None:
            left = min(left, self.max_steps - self.global_step)
        return max(left, 0)

    def summary(
        self,
        status: str,
        config: Config,
        windows_per_epoch: int,
        on_ptb: bool = True,
        **results: Any,
    ) -> dict[str, Any]:
        """What summary.json holds: where the run stands, small enough to list dozens of runs.

        status: stopped (at `epochs_completed`, `window`), finished (with test_ppl and
        best_test_ppl in `results`) or diverged (with diverged_at_step). `stall`: null, or the step
        of the stall warning and whether the latest log point was still stalled. Infinite or NaN
        perplexities become null. `on_ptb`: trained on the PTB files, so that a published row
        with the same config applies.
        """
        published = published_row(config) if on_ptb else None
        return strict(
            {
                "status": status,
                "config_name": self.config_name,
                "config": config.to_dict(),
                "variant": model_variant(config),
                "max_steps": self.max_steps,
                "eval_tokens": self.eval_tokens,
                "cut_short": self.global_step < windows_per_epoch * config.max_max_epoch,
                "epochs_completed": self.epoch,  # the text's "epoch N" is this + 1
                "window": self.window,
                "finished_training": self.finished,
                "global_step": self.global_step,
                "epochs_trained": self.global_step / windows_per_epoch,
                "valid_ppl": self.history[-1]["valid_ppl"] if self.history else None,
                "best_valid_ppl": self.best_valid_ppl,
                "test_ppl": None,
                "best_test_ppl": None,
                "stall": None
                if self.stall_warned_at is None
                else {
                    "warned_at_step": self.stall_warned_at,
                    "ongoing": self.stalled_since is not None,
                },
                "train_wps": self.timed_tokens / self.train_seconds if self.train_seconds else None,
                "wall_seconds": self.wall_seconds,
                "published": None
                if published is None
                else {"config": published[0], **published[1]},
                **results,
            }
        )
