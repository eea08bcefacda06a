"""The one way ptblm writes a file: atomically, with the usual permissions.

Checkpoints, config.yaml, metrics.json and the downloaded corpus all go through atomic_write, so
a crash, a full disk or a kill -9 at any moment leaves either the old file or the new one under
the final name, never a part of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# mkstemp creates files readable by their owner only; ptblm's files get the usual umask instead,
# so that a shared data or runs directory stays readable to the other users.
_UMASK = os.umask(0)
os.umask(_UMASK)
TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, then rename it over `path`.

    On any failure (a full disk, an exception from `write`, Ctrl-C) the temp file is removed and
    the old file under `path`, if any, is untouched.
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX
    )
    try:
        with os.fdopen(handle, "wb") as file:  # closed however the write ends
            os.fchmod(file.fileno(), 0o666 & ~_UMASK)
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is.
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def write_fix(error: BaseException) -> str:
    """What to do about a write that failed with `error`, by its cause ("free some space", ...)."""
    number = getattr(error, "errno", None)
    if isinstance(error, PermissionError) or number == errno.EROFS:  # read-only or immutable
        return "make it writable"
    if number == errno.EISDIR:
        return "move aside the directory in its place"
    if number in (errno.ENOENT, errno.ENOTDIR):  # the folder was removed or replaced
        return "put its folder back"
    if out_of_space(error):
        return "free some space"
    return "check that disk"


def out_of_space(error: BaseException) -> bool:
    """A full disk or quota (torch's zip writer says a full disk with a RuntimeError)."""
    number = getattr(error, "errno", None)
    return number in (errno.ENOSPC, errno.EDQUOT) or not isinstance(error, OSError)


def remove_stale_temp_files(folder: Path) -> None:
    """Remove the temp files that a process killed while writing left in `folder`, where it may
    (a folder made read-only keeps them: they harm nothing but space)."""
    for stale in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink(missing_ok=True)
