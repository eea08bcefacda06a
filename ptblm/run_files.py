"""The files of a run directory, their names, reading them safely, and finding a run's
checkpoint (for eval and generate), without torch.

    runs/small-20261122-101500/
        config.yaml               the resolved config, headed by the command that wrote it
        events.out.tfevents.*     TensorBoard (progress.py)
        last.pt, best.pt          checkpoints (checkpoint.py)
        metrics.json              the results, once the run has tested (results.py)
        summary.json              where the run stands (run_state.py), for `ptblm runs`
                                  (run_table.py): written after every checkpoint and the test
        .lock                     held by the process training the run (run_dir.py)

A run directory may have come from someone else: its files are opened never through a link and
never blocking, and a JSON file is written strict (no inf or NaN).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shlex
import stat
from pathlib import Path
from typing import Any

import yaml

from ptblm import safe_yaml
from ptblm.errors import CheckpointError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
SUMMARY_FILE = "summary.json"
LOCK_FILE = ".lock"
LAST = "last.pt"
BEST = "best.pt"


def finite(value: float | None) -> float | None:
    """JSON has no inf or nan: such a value is written as null."""
    return value if value is not None and math.isfinite(value) else None


def strict(data: Any) -> Any:
    """`data` with every infinite or NaN float, however deep, made None: strict JSON."""
    if isinstance(data, float):
        return finite(data)
    if isinstance(data, dict):
        return {key: strict(value) for key, value in data.items()}
    if isinstance(data, list):
        return [strict(value) for value in data]
    return data


def open_regular(path: Path, flags: int = os.O_RDONLY, follow: bool = False) -> int:
    """os.open for a file that may have come from someone else: never blocking on a FIFO or
    device (reading a FIFO waits for a writer forever: `ptblm runs` or a corpus would hang), and
    for a file of a run directory never through a symbolic link (a `.lock` linked to a file of
    the user's would be written); `follow` for corpus files, which a user may well link. OSError
    "not a regular file" unless it is one."""
    never = getattr(os, "O_NONBLOCK", 0) | (0 if follow else getattr(os, "O_NOFOLLOW", 0))
    handle = os.open(path, flags | never | getattr(os, "O_CLOEXEC", 0), 0o666)
    if not stat.S_ISREG(os.fstat(handle).st_mode):
        os.close(handle)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    return handle


def read_text(path: Path) -> str:
    """A run directory's text file, read as open_regular allows."""
    with os.fdopen(open_regular(path), encoding="utf-8") as file:
        return file.read()


def is_locked(run_dir: Path) -> bool:
    """Is a process training this run now (holding its lock)?"""
    try:
        import fcntl
    except ImportError:  # not POSIX: runs are never locked
        return False
    try:
        with os.fdopen(open_regular(run_dir / LOCK_FILE)) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
            return False
    except OSError:
        return False


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as a plain mapping ({} where it is missing or unreadable)."""
    try:
        config = safe_yaml.load(read_text(run_dir / CONFIG_FILE))  # no alias bombs
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def config_name_of(run_dir: Path, depth: int = 0) -> str | None:
    """The --config a run was started with: its summary.json's config_name, or for a run that
    never wrote one, the --config of the command in its config.yaml's header (that run's own
    name when it is another run's config.yaml, as the "Train again with" line gives)."""
    summary = read_json(run_dir / SUMMARY_FILE) or {}
    if isinstance(summary.get("config_name"), str):
        return summary["config_name"]
    try:
        line = read_text(run_dir / CONFIG_FILE).splitlines()[1].lstrip("# ")
    except (OSError, ValueError, IndexError):
        return None
    try:
        command = shlex.split(line)  # as cli_train.command_line quoted it
    except ValueError:  # an edited header, its quotes unbalanced: its words, unquoted
        command = [word.strip("'\"") for word in line.split()]
    for option, following in zip(command, [*command[1:], ""]):
        name, equals, value = option.partition("=")
        if name in ("--config", "-c"):
            path = Path(value if equals else following)
            if path.name == CONFIG_FILE and depth < 10:
                return config_name_of(path.parent, depth + 1) or path.stem
            return path.stem
    return None


def run_path(target: Path | str, runs_dir: Path) -> Path:
    """`target` as given; where nothing is there and it is a bare name (as `ptblm runs` lists
    them), the run of that name under runs_dir, if there is one."""
    target = Path(target)
    under = Path(runs_dir) / target
    if len(target.parts) == 1 and not target.exists() and under.exists():
        return under
    return target


def newest_run(runs_dir: Path) -> Path:
    """The run directory under runs_dir whose checkpoint was written last."""
    candidates = [
        path
        for path in Path(runs_dir).glob("*/*.pt")
        if path.name in (BEST, LAST) and path.is_file()  # not a dangling link
    ]
    if not candidates:
        raise CheckpointError(
            f"no run with a checkpoint under {runs_dir}. Train one first (ptblm train --config "
            f"small), or name a run directory or checkpoint file."
        )
    return max(candidates, key=lambda path: path.stat().st_mtime).parent


def resolve_checkpoint(target: Path | None, runs_dir: Path) -> Path:
    """A checkpoint file as given, or a run directory's best.pt, else its last.pt (newest run when
    None)."""
    run_dir = newest_run(runs_dir) if target is None else run_path(target, runs_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory or checkpoint file.")
    for name in (BEST, LAST):
        if (run_dir / name).is_file():
            return run_dir / name
    summary = read_json(run_dir / SUMMARY_FILE) or {}
    if summary.get("status") == "diverged":
        raise CheckpointError(
            f"{run_dir} diverged at step {summary.get('diverged_at_step', '?')} before its first "
            f"checkpoint: it has no weights to evaluate. Train it again with the change its "
            f"training's last message named."
        )
    if (run_dir / CONFIG_FILE).is_file():
        raise CheckpointError(
            f"{run_dir} holds no checkpoint yet: a run saves one at the end of each epoch (and "
            f"every --checkpoint-every N windows), and this one has not."
        )
    raise CheckpointError(f"{run_dir} holds no {BEST} or {LAST}: it is not a ptblm run directory.")
