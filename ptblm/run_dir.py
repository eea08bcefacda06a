"""The run directory (its files, and finding runs and their checkpoints for eval and generate:
run_files.py; for --resume: resume.py): creating and locking it, writing its files.

Under torchrun only rank 0 creates, locks and writes it, checkpoints included.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ptblm import __version__
from ptblm.atomic import atomic_write, remove_stale_temp_files, write_fix
from ptblm.checkpoint import model_from_checkpoint, save_checkpoint
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import Config, config_to_yaml
from ptblm.distributed import Distributed
from ptblm.errors import CheckpointError, ConfigError, DataError, shell_word
from ptblm.model import LSTMLanguageModel
from ptblm.results import METRICS_ONLY
from ptblm.resume import never_saved, resumable_checkpoint
from ptblm.run_files import (
    BEST,
    CONFIG_FILE,
    LOCK_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    is_locked,
    open_regular,
    read_json,
)


def default_run_name(config_label: str) -> str:
    return f"{config_label}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = None

    def create(
        self,
        config: Config,
        command: str,
        dist: Distributed,
        device: torch.device,
        again: str = "",
        unique: bool = False,
    ):
        """Rank 0 creates the directory, locks it and writes config.yaml (headed by the command
        and how to train the same run again, `again`: flags such as --max-steps or --corpus that
        the config does not hold); if that fails, no rank trains on (a collective under torchrun).
        `unique` (a default name): where the name is taken (two runs started in the same second),
        the run takes NAME-2, NAME-3, ... instead."""
        failure, made = None, False
        if dist.is_main:
            new_parents = [path for path in self.path.parents if not path.exists()]  # deepest first
            try:
                self._make(unique)
                made = True
                self.lock()
                self._write_config(config, command, again)
            except FileExistsError:
                if resumable_checkpoint(self.path) is None:
                    failure = ConfigError(never_saved(self.path))
                elif is_locked(self.path):
                    failure = ConfigError(
                        f"{self.path} already exists, and another ptblm process is training it "
                        f"now: wait for it, or choose another --name."
                    )
                elif self.read_metrics() is not None:
                    failure = ConfigError(
                        f"{self.path} already exists, a finished run. Choose another --name, or "
                        f"see its results with ptblm eval {shell_word(self.path)}."
                    )
                else:
                    failure = ConfigError(
                        f"{self.path} already exists. Choose another --name, or continue it with "
                        f"ptblm train --resume {shell_word(self.path)}."
                    )
            except OSError as error:
                fix = (
                    "Give a shorter --name (or --runs-dir)."
                    if error.errno == errno.ENAMETOOLONG
                    else "Choose a writable one with --runs-dir DIR."
                )
                failure = DataError(
                    f"cannot create the run directory {self.path} ({error.strerror}). {fix}"
                )
            except CheckpointError:  # its .lock cannot be made (the inodes of a disk are used up)
                failure = DataError(
                    f"cannot create the run directory {self.path} (its {LOCK_FILE} cannot be "
                    f"made). Choose a writable one with --runs-dir DIR."
                )
            if failure is not None and made:  # no half-made run to trip over when run again
                self.unlock()
                shutil.rmtree(self.path, ignore_errors=True)
            for parent in new_parents if failure is not None else ():  # --runs-dir a/b/c
                try:
                    parent.rmdir()  # only while empty
                except OSError:
                    break
        dist.raise_if_failed(failure, device, "create the run directory")
        self.path = Path(dist.broadcast(str(self.path)))

    def _write_config(self, config: Config, command: str, again: str) -> None:
        """config.yaml, headed by the command that wrote it and how to train the same run again."""
        header = (
            f"Resolved config of this run (ptblm {__version__}), written by:\n"
            f"  {command}\n"
            f"Train again with: ptblm train --config {shell_word(self.path / CONFIG_FILE)}{again}"
        )
        # Comments only may hold a path that is not UTF-8: escaped, the file stays UTF-8.
        text = config_to_yaml(config, header).encode(errors="backslashreplace")
        atomic_write(self.path / CONFIG_FILE, lambda file: file.write(text))

    def _make(self, unique: bool) -> None:
        """mkdir the run directory: atomic, so two processes never both take one name."""
        name = self.path.name
        for number in range(2, 100):
            try:
                self.path.mkdir(parents=True, exist_ok=False)
                return
            except FileExistsError:
                if not unique:
                    raise
                self.path = self.path.with_name(f"{name}-{number}")
        self.path.mkdir(parents=True, exist_ok=False)

    def reopen(
        self,
        config: Config,
        command: str,
        again: str,
        dist: Distributed,
        device: torch.device,
        finished: bool = False,
    ) -> None:
        """Take over an existing run (resume): rank 0 locks it, removes the temp file that a
        process killed while saving left behind (never the checkpoint itself) and writes a lost
        config.yaml anew from `config`, the checkpoint's; if that fails, no rank trains on (a
        collective under torchrun). A run `finished` and tested, its files in place, is only
        shown: not taken over, no lock, so that it may lie on a read-only disk."""
        if finished and all((self.path / name).is_file() for name in (METRICS_FILE, CONFIG_FILE)):
            return
        failure = None
        if dist.is_main:
            try:
                self.lock()
                remove_stale_temp_files(self.path)
                if not (self.path / CONFIG_FILE).exists():
                    self._write_config(config, command, again)
            except CheckpointError as error:
                failure = error
            except OSError as error:
                failure = CheckpointError(
                    f"cannot write {self.path / CONFIG_FILE} ({error.strerror}): "
                    f"{write_fix(error)}, or copy the run to a writable place and resume that copy."
                )
        dist.raise_if_failed(failure, device, "take over the run directory")

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
        self.unlock()
        raise CheckpointError(
            f"another ptblm process is training {self.path}; wait for it or stop it first."
        )

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None

    def save_checkpoint(self, name: str, checkpoint: dict[str, Any]) -> None:
        """Write best.pt or last.pt atomically; a failure says how the run goes on."""
        try:
            save_checkpoint(self.path / name, checkpoint)
        except CheckpointError as error:
            then = (
                f"Then continue with: ptblm train --resume {shell_word(self.path)}"
                if resumable_checkpoint(self.path)
                else f"The run has no checkpoint yet: start it again (rm -r {shell_word(self.path)} "
                f"first)."
            )
            raise CheckpointError(f"{error} {then}") from None

    def best_model(self) -> LSTMLanguageModel:
        """best.pt's model, on the CPU (a CheckpointError where it is missing or damaged)."""
        return model_from_checkpoint(load_checkpoint(self.path / BEST), self.path / BEST)

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
                f"could not write {path} ({error.strerror}); the checkpoints are saved: "
                f"{write_fix(error)}, then ptblm train --resume {shell_word(self.path)} writes it."
            ) from None
