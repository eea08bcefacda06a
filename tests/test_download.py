"""Downloading PTB: checksums, atomic files, retries and failures (127.0.0.1 and file:// only)."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import PTB_BYTES, PTB_SHA256, PTB_TOKENS, dead_url, sha256

import ptblm.download as download
from ptblm.data import load_corpus
from ptblm.download import download_ptb
from ptblm.errors import DataError


@pytest.fixture
def fast_download(monkeypatch):
    """No backoff, short timeouts, and no proxy between us and 127.0.0.1."""
    monkeypatch.setattr(download, "DOWNLOAD_BACKOFF", 0)
    monkeypatch.setattr(download, "DOWNLOAD_TIMEOUT", 5.0)
    for name in ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return monkeypatch


@pytest.fixture
def mirror(tmp_path, ptb_dir):
    """A writable copy of the three PTB files, to serve or to corrupt."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in PTB_SHA256:
        shutil.copyfile(ptb_dir / name, folder / name)
    return folder


def leftovers(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_download_from_local_server(tmp_path, mirror, serve_dir, fast_download):
    url = serve_dir(mirror)
    fast_download.setenv("PTBLM_DATA_URL", url)
    folder = download_ptb(tmp_path / "data", progress=False)
    assert folder == tmp_path / "data" / "ptb"
    assert sorted(os.listdir(folder)) == sorted(PTB_SHA256)
    for name, digest in PTB_SHA256.items():
        assert (folder / name).stat().st_size == PTB_BYTES[name]
        assert sha256(folder / name) == digest
    assert sorted(serve_dir.requests(url)) == sorted(f"/{name}" for name in PTB_SHA256)

    # A second call finds verified files and fetches nothing.
    mtimes = {name: (folder / name).stat().st_mtime_ns for name in PTB_SHA256}
    assert download_ptb(tmp_path / "data", progress=False) == folder
    assert len(serve_dir.requests(url)) == 3
    assert {name: (folder / name).stat().st_mtime_ns for name in PTB_SHA256} == mtimes


def test_downloaded_files_get_the_umask_permissions_not_mkstemps(tmp_path, ptb_dir, fast_download):
    fast_download.setenv("PTBLM_DATA_URL", ptb_dir.resolve().as_uri())
    folder = download_ptb(tmp_path / "data", progress=False)
    mask = os.umask(0)
    os.umask(mask)
    for name in PTB_SHA256:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o666 & ~mask


def test_downloaded_corpus_loads_like_the_original(tmp_path, mirror, serve_dir, fast_download):
    fast_download.setenv("PTBLM_DATA_URL", serve_dir(mirror) + "/")
    corpus = load_corpus(data_dir=tmp_path / "data", progress=False)
    assert corpus.custom is False
    assert corpus.folder == tmp_path / "data" / "ptb"
    assert len(corpus.vocab) == 10_000
    assert corpus.test.numel() == PTB_TOKENS["test"]


def test_download_with_wrong_checksum_saves_nothing(tmp_path, mirror, serve_dir, fast_download):
    raw = bytearray((mirror / "ptb.valid.txt").read_bytes())
    raw[1000] = ord("Z") if raw[1000] != ord("Z") else ord("Y")  # same size, one byte changed
    (mirror / "ptb.valid.txt").write_bytes(bytes(raw))
    fast_download.setenv("PTBLM_DATA_URL", serve_dir(mirror))
    folder = tmp_path / "data" / "ptb"
    with pytest.raises(DataError) as excinfo:
        download_ptb(tmp_path / "data", progress=False)
    assert "sha256" in str(excinfo.value)
    assert "ptb.valid.txt" in str(excinfo.value)
    assert not (folder / "ptb.valid.txt").exists()
    assert leftovers(folder) == []
    # Only the verified train file may stand there.
    assert set(os.listdir(folder)) <= {"ptb.train.txt"}
    for name in os.listdir(folder):
        assert sha256(folder / name) == PTB_SHA256[name]


def test_download_from_dead_port(tmp_path, fast_download):
    """A refused connection may be passing: asked DOWNLOAD_TRIES times, with the pause doubled
    each time, then given up with the way to fetch the files by hand."""
    fast_download.setenv("PTBLM_DATA_URL", dead_url())
    fast_download.setattr(download, "DOWNLOAD_BACKOFF", 1.5)
    pauses = []
    fast_download.setattr(download, "time", SimpleNamespace(sleep=pauses.append))
    with pytest.raises(DataError) as excinfo:
        download_ptb(tmp_path / "data", progress=False)
    assert download.DOWNLOAD_TRIES == 3 and pauses == [1.5, 3.0]  # for the first file only
    message = str(excinfo.value)
    assert f"in {tmp_path / 'data' / 'ptb'} by hand (mkdir -p it first" in message  # removed
    assert str(tmp_path / "data" / "ptb") in message
    for name in PTB_SHA256:
        assert name in message
    assert not (tmp_path / "data").exists()  # the folders it made are removed again


def test_download_404(tmp_path, serve_dir, fast_download):
    empty = tmp_path / "empty_site"
    empty.mkdir()
    url = serve_dir(empty)
    fast_download.setenv("PTBLM_DATA_URL", url)
    (tmp_path / "data").mkdir()  # the user's own folder: kept
    with pytest.raises(DataError) as excinfo:
        download_ptb(tmp_path / "data", progress=False)
    assert "404" in str(excinfo.value)
    assert "ptb.train.txt" in str(excinfo.value)
    assert os.listdir(tmp_path / "data") == []
    assert serve_dir.requests(url) == ["/ptb.train.txt"]  # a 404 is not asked again


class FlakyHandler(http.server.SimpleHTTPRequestHandler):
    """Answers each file's first request with `status`, then serves it."""

    def __init__(self, *args, status: int, asked: list[str], **kwargs):
        self.status, self.asked = status, asked
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        first = self.path not in self.asked
        self.asked.append(self.path)
        if first:
            self.send_error(self.status)
        else:
            super().do_GET()

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's signature)
        pass


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_server_is_asked_again(tmp_path, mirror, fast_download, status):
    """5xx and 429 (too many requests) pass; a 404 does not (test_download_404)."""
    asked: list[str] = []
    handler = functools.partial(FlakyHandler, directory=str(mirror), status=status, asked=asked)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        fast_download.setenv("PTBLM_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}")
        folder = download_ptb(tmp_path / "data", progress=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert sorted(asked) == sorted(f"/{name}" for name in PTB_SHA256 for _ in range(2))
    for name, digest in PTB_SHA256.items():
        assert sha256(folder / name) == digest
    assert leftovers(folder) == []


def test_a_stale_temporary_file_of_a_killed_download_is_removed(tmp_path, mirror, serve_dir,
                                                                fast_download):  # fmt: skip
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    stale = folder / ".ptb.train.txt.a1b2c3.tmp"  # as atomic_write names its temporary file
    stale.write_bytes(b"half a download")
    fast_download.setenv("PTBLM_DATA_URL", serve_dir(mirror))
    download_ptb(tmp_path / "data", progress=False)
    assert not stale.exists()
    assert sorted(os.listdir(folder)) == sorted(PTB_SHA256)


@pytest.mark.parametrize("given", ["file-url", "folder"])
def test_download_from_file_url_or_a_local_folder(tmp_path, ptb_dir, fast_download, given):
    mirror = ptb_dir.as_uri() if given == "file-url" else os.path.relpath(ptb_dir)
    fast_download.setenv("PTBLM_DATA_URL", mirror)
    folder = download_ptb(tmp_path / "data", progress=False)
    assert sorted(os.listdir(folder)) == sorted(PTB_SHA256)
    for name, digest in PTB_SHA256.items():
        assert sha256(folder / name) == digest


def test_a_mirror_that_is_neither_a_url_nor_a_folder_is_named(tmp_path, fast_download):
    fast_download.setenv("PTBLM_DATA_URL", str(tmp_path / "no-such-folder"))
    with pytest.raises(DataError, match=r"no-such-folder is neither a URL .* nor a folder here"):
        download_ptb(tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()


def test_a_mirror_is_not_read_while_the_files_are_there(tmp_path, ptb_dir, fast_download):
    """A PTBLM_DATA_URL in a shell profile, naming a mount this machine lacks, blocked every
    command although the verified files were in place."""
    fast_download.setenv("PTBLM_DATA_URL", str(tmp_path / "no-such-folder"))
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    for name in PTB_SHA256:
        shutil.copyfile(ptb_dir / name, folder / name)
    assert download_ptb(tmp_path / "data", progress=False) == folder


@pytest.mark.parametrize("name", ["ptb.train.txt", "ptb.valid.txt"])
def test_existing_corrupted_file(tmp_path, ptb_dir, fast_download, name):
    # Never fetched: whatever happens, the URL leads nowhere.
    fast_download.setenv("PTBLM_DATA_URL", dead_url())
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    for other in PTB_SHA256:
        shutil.copyfile(ptb_dir / other, folder / other)
    (folder / name).write_text("not the penn treebank\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        download_ptb(tmp_path / "data", progress=False)
    message = str(excinfo.value)
    assert str(folder / name) in message
    assert "Delete" in message or "delete" in message
    assert "--corpus" in message
    # It is the user's file: left as it was.
    assert (folder / name).read_text(encoding="utf-8") == "not the penn treebank\n"


def test_a_dropped_connection_is_retried(tmp_path, mirror, fast_download):
    """The first answer for each file stops halfway (as a dropped connection does); the retry
    gets it whole. Nothing half-downloaded is ever kept."""
    import http.server
    import threading

    requests = []

    class Flaky(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            requests.append(self.path)
            body = (mirror / self.path.lstrip("/")).read_bytes()
            first_try = requests.count(self.path) == 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if first_try else body)
            if first_try:
                self.close_connection = True

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fast_download.setenv("PTBLM_DATA_URL", f"http://127.0.0.1:{server.server_address[1]}")
        folder = download_ptb(tmp_path / "data", progress=False)
    finally:
        server.shutdown()
    assert sorted(requests) == sorted(f"/{name}" for name in PTB_SHA256 for _ in range(2))
    for name, expected in PTB_SHA256.items():
        assert sha256(folder / name) == expected
    assert leftovers(folder) == []


def test_a_full_disk_stops_at_once(tmp_path, ptb_dir, fast_download):
    """ENOSPC while writing is our disk, not the network: it was retried three times and then
    the message said to place the files by hand. Now: one try, and what to do about the disk."""
    import errno

    real_write = download.atomic_write

    class FullDisk:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device")

        def tell(self):
            return self.file.tell()

    tries = []

    def atomic_write_on_a_full_disk(path, write):
        tries.append(path.name)
        real_write(path, lambda file: write(FullDisk(file)))

    fast_download.setattr(download, "atomic_write", atomic_write_on_a_full_disk)
    fast_download.setenv("PTBLM_DATA_URL", ptb_dir.as_uri())
    folder = tmp_path / "data" / "ptb"
    with pytest.raises(DataError) as raised:
        download_ptb(tmp_path / "data", progress=False)
    message = str(raised.value)
    assert message.startswith(f"no space left on device in {folder} (No space left on device)")
    assert "--data-dir" in message and "by hand" not in message
    assert tries == ["ptb.train.txt"]  # one try, not three
    assert not (tmp_path / "data").exists()


def test_a_data_file_that_is_not_a_regular_file_is_named(tmp_path, fast_download):
    """A directory (or FIFO, or device) where a PTB file belongs: a traceback (IsADirectoryError)
    or, for a FIFO, a wait forever."""
    folder = tmp_path / "data" / "ptb"
    (folder / "ptb.train.txt").mkdir(parents=True)
    os.mkfifo(folder / "ptb.valid.txt")
    fast_download.setenv("PTBLM_DATA_URL", dead_url())
    with pytest.raises(DataError) as excinfo:
        download_ptb(tmp_path / "data", progress=False)
    assert str(excinfo.value) == (
        f"cannot read {folder / 'ptb.train.txt'} (not a regular file): remove it, and ptblm "
        f"downloads the file again."
    )
    status = download.corpus_status(tmp_path / "data")
    assert status == {
        "ptb.train.txt": "not a regular file",
        "ptb.valid.txt": "not a regular file",
        "ptb.test.txt": "missing",
    }


def test_temporary_files_that_cannot_be_removed_do_not_stop_verified_files(
    tmp_path, mirror, fast_download, monkeypatch
):
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    for name in PTB_SHA256:
        shutil.copyfile(mirror / name, folder / name)
    (folder / ".ptb.train.txt.x1.tmp").write_bytes(b"half")
    unlink = Path.unlink

    def read_only(path, missing_ok=False):
        if path.name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", read_only)
    fast_download.setenv("PTBLM_DATA_URL", dead_url())  # never asked: the files are verified
    assert download_ptb(tmp_path / "data", progress=False) == folder


def test_a_mirror_that_sends_more_than_a_ptb_file_is_cut_off(tmp_path, serve_dir, fast_download):
    """An endless or oversized body filled the disk before the checksum could refuse it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "ptb.train.txt").write_bytes(b"word " * 1_300_000)  # 6.5 MB
    fast_download.setenv("PTBLM_DATA_URL", serve_dir(site))
    with pytest.raises(DataError, match=r"ptb\.train\.txt sends more than 6 MB: that is not the"):
        download_ptb(tmp_path / "data", progress=False)
    assert not (tmp_path / "data").exists()
