"""Continuing a stopped run: what a run stopped by a signal says to continue it, which of its
checkpoints to resume from (the one further in training, by its step, not its file time), and
whether the run may go on (its config.yaml unedited, its checkpoint readable), with what to do
where it may not.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ptblm.checkpoint import checkpoint_config
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import Config, load_config
from ptblm.errors import CheckpointError, ConfigError, Interrupted, shell_word
from ptblm.run_files import BEST, CONFIG_FILE, LAST, is_locked

if TYPE_CHECKING:
    from ptblm.run_state import RunState
    from ptblm.signals import StopOnSignal


def never_saved(run_dir: Path, resuming: bool = False) -> str:
    """Why a directory without a checkpoint cannot be resumed (`resuming`) or trained into; rm -r
    is said only of a run that ptblm started and that no process is training now."""
    another = "" if resuming else ", or choose another --name"
    if is_locked(run_dir):
        return (
            f"another ptblm process is training {run_dir} (it has saved no checkpoint yet): wait "
            f"for it or stop it first{another}."
        )
    if not (run_dir / CONFIG_FILE).is_file():
        return f"{run_dir} exists and is not a ptblm run directory: choose another --name."
    return (
        f"{run_dir} holds no checkpoint: its run stopped before it saved one, so there is nothing "
        f"to continue. Start it again (delete the directory first: rm -r {shell_word(run_dir)})"
        f"{another}."
    )


def continue_with(run_dir: Path) -> str:
    return f"Continue with: ptblm train --resume {shell_word(run_dir)}"


def stopped_by_signal(stop: StopOnSignal, run: RunState, run_dir: Path) -> Interrupted:
    """What a run stopped by a signal says: where it stopped, that last.pt is saved, and how to go
    on."""
    where = (
        f"in the final test (training had ended at step {run.global_step})"
        if run.finished
        else f"at step {run.global_step} (epoch {run.epoch + 1})"
    )
    return Interrupted(
        f"{stop.name} received: stopped {where} and saved {run_dir / LAST}.\n"
        + continue_with(run_dir),
        stop.exit_code,
    )


def quit_note(run_dir: Path) -> str:
    """What a second Ctrl-C, which quits at once, says (in the signal handler: no torch)."""
    if (run_dir / LAST).exists() or (run_dir / BEST).exists():
        return continue_with(run_dir)
    return f"The run had saved no checkpoint: start it again (first rm -r {shell_word(run_dir)})."


def resumable_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume continues from: last.pt, or best.pt where that is further in
    training (best.pt is written first at an epoch's end and holds the same full training state,
    so a run whose last.pt could not be written there loses nothing); None where the run has
    neither. Their step and epoch decide, not their times, which a copy (cp -r) changes; where one
    cannot be read, the newer file is taken, so that the resume names the damaged one."""
    last, best = run_dir / LAST, run_dir / BEST
    if not (last.is_file() and best.is_file()):
        return last if last.is_file() else best if best.is_file() else None
    where = _position(last), _position(best)
    if None in where:
        return max((last, best), key=lambda path: path.stat().st_mtime_ns)
    # A tie in steps: best.pt of an epoch's end is further than a last.pt saved in its
    # validation (the epoch still to end); in a tie in both, last.pt.
    return best if where[1] > where[0] else last


def _position(path: Path) -> tuple[int, int] | None:
    """A checkpoint's (global_step, epoch), its tensors left on disk (None where unreadable)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        where = checkpoint["global_step"], checkpoint["epoch"]
    except Exception:  # damaged or not a checkpoint: load_checkpoint says why, when it is loaded
        return None
    return where if all(type(number) is int for number in where) else None


def load_resumable(run_dir: Path) -> tuple[dict[str, Any], Config, Path]:
    """The checkpoint of a run that may be resumed (resumable_checkpoint), its config and its
    path. A run continues with the config it started with: a config.yaml edited since is refused,
    naming the keys that differ; a lost one is written anew on resume (RunDirectory.reopen)."""
    config_file = run_dir / CONFIG_FILE
    not_a_run = CheckpointError(
        f"{run_dir} is not a ptblm run directory (it needs a ptblm checkpoint, {LAST} or {BEST}, "
        f"beside its {CONFIG_FILE}). Name the directory a `ptblm train` run wrote, e.g. "
        f"runs/small-20261122-101500."
    )
    path = resumable_checkpoint(run_dir) if run_dir.is_dir() else None
    if path is None and not config_file.is_file():
        raise not_a_run
    if path is None:
        raise CheckpointError(never_saved(run_dir, resuming=True))
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        if not config_file.exists():  # another tool's last.pt, say
            raise not_a_run from None
        other = ({run_dir / LAST, run_dir / BEST} - {path}).pop()
        if not other.is_file():
            hint = "The run has no other checkpoint to resume from: start it again."
        elif not _loads(other):
            hint = f"Its {other.name} cannot be read either: start the run again."
        else:
            older = (
                "written at the end of the run's best epoch"
                if other.name == BEST
                else "an older one: the run trains again from there and writes best.pt anew"
            )
            hint = (
                f"A run resumes from the later of its {LAST} and {BEST}: move {path.name} aside "
                f"(mv {shell_word(path)} {shell_word(f'{path}.damaged')}) to resume from "
                f"{other.name}, {older}."
            )
        raise CheckpointError(f"{error} {hint}") from None
    saved = checkpoint_config(checkpoint, path)
    if not config_file.exists():
        return checkpoint, saved, path
    try:
        edited = load_config(str(config_file))
    except ConfigError as error:
        aside = shell_word(f"{config_file}.damaged")
        raise CheckpointError(
            f"{config_file} no longer loads: {error}\nThe run continues with the config it "
            f"started with, which {path.name} holds: restore {CONFIG_FILE}, or move it aside "
            f"(mv {shell_word(config_file)} {aside}) and resume: ptblm writes it anew."
        ) from None
    changed = [
        f"{key}: {value!r} in {CONFIG_FILE}, {getattr(saved, key)!r} in {path.name}"
        for key, value in edited.to_dict().items()
        if value != getattr(saved, key)
    ]
    if changed:
        raise CheckpointError(
            f"{config_file} does not match the run's checkpoint ({'; '.join(changed)}). A run "
            f"continues with the config it started with: restore {CONFIG_FILE}, or start a new "
            f"run with ptblm train --config {shell_word(config_file)}."
        )
    return checkpoint, saved, path


def _loads(path: Path) -> bool:
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True
