"""The run directory: what a run writes, and finding runs and their checkpoints again.

    runs/small-20261122-101500/
        config.yaml               the resolved config, headed by the command that wrote it
        events.out.tfevents.*     TensorBoard (progress.py)
        last.pt, best.pt          checkpoints (checkpoint.py)
        metrics.json              the results, once the run has tested
        summary.json              where the run stands, for `ptblm runs` (run_table.py): written
                                  after every checkpoint and after the test
        .lock                     held by the process training the run

Under torchrun only rank 0 creates, locks and writes it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ptblm import __version__
from ptblm.atomic import atomic_write, remove_stale_temp_files
from ptblm.checkpoint import checkpoint_config, load_checkpoint
from ptblm.config import Config, config_to_yaml, load_config, model_variant
from ptblm.distributed import Distributed
from ptblm.errors import CheckpointError, ConfigError, DataError
from ptblm.published import published_row
from ptblm.run_table import (
    BEST,
    CONFIG_FILE,
    LAST,
    LOCK_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    open_regular,
    read_json,
    strict,
)
from ptblm.runtime import device_description

if TYPE_CHECKING:
    from ptblm.train import Trainer


def default_run_name(config_label: str) -> str:
    return f"{config_label}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = None

    def create(
        self, config: Config, command: str, dist: Distributed, device: torch.device, limits=""
    ):
        """Rank 0 creates the directory, locks it and writes config.yaml (headed by the command
        and how to train the same run again, `limits`: flags such as --max-steps that the config
        does not hold); if that fails, no rank trains on (a collective under torchrun)."""
        failure = None
        if dist.is_main:
            try:
                self.path.mkdir(parents=True, exist_ok=False)
                self.lock()
                header = (
                    f"Resolved config of this run (ptblm {__version__}), written by:\n"
                    f"  {command}\n"
                    f"Train again with: ptblm train --config {self.path / CONFIG_FILE}{limits}"
                )
                text = config_to_yaml(config, header).encode()
                atomic_write(self.path / CONFIG_FILE, lambda file: file.write(text))
            except FileExistsError:
                if resumable_checkpoint(self.path) is None:
                    failure = ConfigError(never_saved(self.path))
                else:
                    failure = ConfigError(
                        f"{self.path} already exists. Choose another --name, or continue it with "
                        f"ptblm train --resume {self.path}."
                    )
            except OSError as error:
                failure = DataError(
                    f"cannot create the run directory {self.path} ({error.strerror}). "
                    f"Choose a writable one with --runs-dir DIR."
                )
        if dist.any(failure is not None, device):
            raise failure or DataError("rank 0 could not create the run directory.")

    def reopen(self, dist: Distributed) -> None:
        """Take over an existing run (resume): lock it, and remove the temp file that a process
        killed while saving left behind (never the checkpoint itself)."""
        if dist.is_main:
            self.lock()
            remove_stale_temp_files(self.path)

    def lock(self) -> None:
        """One process trains a run directory at a time (a second --resume is refused)."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:  # never truncate: a .lock that is a link to a file of the user's must not wipe it
            handle = open_regular(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        except OSError as error:
            raise CheckpointError(
                f"cannot lock {self.path / LOCK_FILE} ({error.strerror or error}): the run "
                f"directory must be writable and its .lock a plain file. Copy the run to a "
                f"writable place (cp -r, without its .lock) and resume that copy."
            ) from None
        self._lock = os.fdopen(handle, "r+")
        for attempt in range(20):  # `ptblm runs` may hold a shared lock for a moment
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                time.sleep(0.01 * attempt)
        raise CheckpointError(
            f"another ptblm process is training {self.path}; wait for it or stop it first."
        )

    def read_metrics(self) -> dict[str, Any] | None:
        return read_json(self.path / METRICS_FILE)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._write_json(METRICS_FILE, metrics)

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_json(SUMMARY_FILE, summary)

    def complete_summary(self, metrics: dict[str, Any]) -> None:
        """Write the finished run's summary.json from its metrics.json, unless it is there."""
        if (read_json(self.path / SUMMARY_FILE) or {}).get("status") != "finished":
            self.write_summary({k: v for k, v in metrics.items() if k not in METRICS_ONLY})

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        path = self.path / name
        text = json.dumps(data, indent=2).encode() + b"\n"
        try:
            atomic_write(path, lambda file: file.write(text))
        except OSError as error:
            raise CheckpointError(
                f"could not write {path} ({error.strerror}); the checkpoints are saved: free some "
                f"space, then ptblm train --resume {self.path} writes it."
            ) from None


def run_summary(run: Trainer, status: str, **results: Any) -> dict[str, Any]:
    """What summary.json holds: where the run stands, small enough to list dozens of runs.

    status: stopped (at `epoch`, `window`), finished (with test_ppl and best_test_ppl in
    `results`) or diverged (with diverged_at_step). Infinite or NaN perplexities become null.
    """
    record, config = run.record, run.config
    published = published_row(config)
    history = record.history
    return strict(
        {
            "status": status,
            "config_name": run.config_name,
            "config": config.to_dict(),
            "variant": model_variant(config),
            "max_steps": run.max_steps,
            "eval_tokens": run.eval_tokens,
            "cut_short": record.global_step < run.windows_per_epoch * config.max_max_epoch,
            "epoch": record.epoch,
            "window": record.window,
            "finished_training": record.finished,
            "global_step": record.global_step,
            "epochs_trained": record.global_step / run.windows_per_epoch,
            "valid_ppl": history[-1]["valid_ppl"] if history else None,
            "best_valid_ppl": record.best_valid_ppl,
            "test_ppl": None,
            "best_test_ppl": None,
            "train_wps": record.timed_tokens / record.train_seconds
            if record.train_seconds
            else None,
            "wall_seconds": run.wall_seconds(),
            "published": None if published is None else {"config": published[0], **published[1]},
            **results,
        }
    )


METRICS_ONLY = (
    "train_ppl", "epochs", "device", "threads", "world_size", "precision", "versions", "history",
)  # fmt: skip


def run_metrics(run: Trainer, summary: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json holds: the final summary, with how the run was made and its history."""
    record = run.record
    return {
        **summary,
        "train_ppl": strict(record.history[-1]["train_ppl"]),
        "epochs": len(record.history),  # epochs validated (the last one partial if cut short)
        "device": device_description(run.device),
        "threads": run.threads.describe() if run.threads else torch.get_num_threads(),
        "world_size": run.dist.world_size,
        "precision": run.config.precision,
        "versions": {
            "ptblm": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cudnn": torch.backends.cudnn.version() if run.device.type == "cuda" else None,
        },
        "history": record.history,
    }


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """What `ptblm train` prints at the end, from metrics.json: the run's row beside the published
    one, or why they cannot be compared."""
    published = metrics.get("published")
    variant = ", ".join(f"{key}: {value}" for key, value in (metrics.get("variant") or {}).items())
    beside = f"; this run's model adds {variant}" if variant else ""
    wps = metrics["train_wps"] or 0
    epochs = metrics.get("epochs_trained", metrics["epochs"])

    def ppl(key: str, width: int = 8) -> str:
        value = metrics[key]  # null in the JSON: it was infinite or NaN
        return f"{'inf' if value is None else f'{value:.2f}':>{width}}"

    lines = [
        f"{'':>10} {'train':>8} {'valid':>8} {'test':>8}",
        f"{'ptblm':>10} {ppl('train_ppl')} {ppl('valid_ppl')} "
        f"{ppl('test_ppl')}   ({epochs:.3g} epochs, "
        f"{metrics['wall_seconds'] / 60:.1f} min, {wps:.0f} words/s, {metrics['device']})",
    ]
    if metrics.get("eval_tokens"):
        lines.append(
            f"Validated and tested on the first {metrics['eval_tokens']} tokens of each split "
            f"(--eval-tokens): not comparable with the table."
        )
    if metrics.get("cut_short"):
        limit = f"--max-steps {metrics['max_steps']}" if metrics.get("max_steps") else "its limit"
        lines.append(
            f"Cut short by {limit} after {epochs:.3g} epochs"
            + (
                f": not comparable with the published {published['config']} row."
                if published
                else "."
            )
        )
    elif published:
        lines.append(
            f"{'published':>10} {published['train']:8.2f} {published['valid']:8.2f} "
            f"{published['test']:8.2f}   (the tutorial's {published['config']} row{beside})"
        )
    lines.append(
        f"best.pt: valid {ppl('best_valid_ppl', 0)}, test {ppl('best_test_ppl', 0)}.  "
        f"Run directory: {run_dir}  (tensorboard --logdir {run_dir.parent})"
    )
    return "\n".join(lines)


def newest_run(runs_dir: Path) -> Path:
    """The run directory under runs_dir whose checkpoint was written last."""
    candidates = [path for path in Path(runs_dir).glob("*/*.pt") if path.name in (BEST, LAST)]
    if not candidates:
        raise CheckpointError(
            f"no run with a checkpoint under {runs_dir}. Train one first (ptblm train --config "
            f"small), or name a run directory or checkpoint: ptblm eval RUN_DIR."
        )
    return max(candidates, key=lambda path: path.stat().st_mtime).parent


def resolve_checkpoint(target: Path | None, runs_dir: Path) -> Path:
    """A checkpoint file as given, or a run directory's best.pt (newest run when None)."""
    run_dir = newest_run(runs_dir) if target is None else Path(target)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory or checkpoint file.")
    for name in (BEST, LAST):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"{run_dir} holds no {BEST} or {LAST}: it is not a ptblm run directory.")


def never_saved(run_dir: Path) -> str:
    return (
        f"{run_dir} holds no checkpoint: its run stopped before it saved one, so there is nothing "
        f"to continue. Start it again (delete the directory first: rm -r {run_dir}), or choose "
        f"another --name."
    )


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume continues from: last.pt, or best.pt where that is newer (best.pt
    is written first at an epoch's end and holds the same full training state, so a run whose
    last.pt could not be written there loses nothing); None where the run has neither."""
    saved = [path for path in (run_dir / LAST, run_dir / BEST) if path.is_file()]
    return max(saved, key=lambda path: path.stat().st_mtime_ns, default=None)


def load_resumable(run_dir: Path) -> tuple[dict[str, Any], Config]:
    """The checkpoint of a run that may be resumed (resumable_checkpoint), and its config. A run
    continues with the config it started with: a config.yaml edited since is refused, naming the
    keys that differ."""
    config_file = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not config_file.is_file():
        raise CheckpointError(
            f"{run_dir} is not a ptblm run directory (it needs {CONFIG_FILE} and {LAST}). Name "
            f"the directory a `ptblm train` run wrote, e.g. runs/small-20261122-101500."
        )
    last = resumable_checkpoint(run_dir)
    if last is None:
        raise CheckpointError(never_saved(run_dir))
    checkpoint = load_checkpoint(last)
    saved = checkpoint_config(checkpoint, last)
    try:
        edited = load_config(str(config_file))
    except ConfigError as error:
        raise CheckpointError(f"{config_file} was edited and no longer loads: {error}") from None
    changed = [
        f"{key}: {value!r} in {CONFIG_FILE}, {getattr(saved, key)!r} in {LAST}"
        for key, value in edited.to_dict().items()
        if value != getattr(saved, key)
    ]
    if changed:
        raise CheckpointError(
            f"{config_file} does not match the run's checkpoint ({'; '.join(changed)}). A run "
            f"continues with the config it started with: restore {CONFIG_FILE}, or start a new "
            f"run with ptblm train --config {config_file}."
        )
    return checkpoint, saved
