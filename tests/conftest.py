"""Shared fixtures: the real PTB files, a tiny hand-made corpus, and a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest
import torch
from helpers import make_corpus, ptblm

# One thread, fixed, in this process and in every `ptblm` the tests run (unless OMP_NUM_THREADS
# says otherwise). Fixed: left to itself ptblm adapts the count to the machine's load
# (runtime.Threads; test_runtime.py tests that), and runs compared bit for bit must compute
# alike. One: the suite's models are tiny, and where anything else shares the 2-core CI machine
# two threads wait on each other (a test measured at 16 s took 402 s under such load, 20 s with
# one thread; on an idle machine one thread costs about 10%).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def same_random_state_for_every_test():
    """Every test starts from one RNG state, so that a draw it does not seed itself (weights,
    dropout masks) is the same whatever ran before it in its process: under pytest-xdist that
    order changes with the number of workers and the files each is given."""
    torch.manual_seed(0)


# ../shared/ptb relative to the repository root (this file is <root>/tests/conftest.py).
PTB_DIR = Path(__file__).resolve().parents[2] / "shared" / "ptb"
PTB_FILES = ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")

# The tiny corpus, written out by hand. Every word of valid and test occurs in train.
# Train word counts: the 6, <eos> 4, a 3, cat 3, dog 3, on 3, mat 2, sat 2, and 1, log 1, saw 1
# (29 tokens, 11 distinct words).
TINY_TRAIN = (
    "the cat sat on the mat\n"
    "the dog sat on the log\n"
    "a cat and a dog\n"
    "the dog saw a cat on the mat\n"
)
TINY_VALID = "the cat sat on the log\n"
TINY_TEST = "a dog sat on the mat\n"


def pytest_collection_modifyitems(config, items):
    """Without CUDA, deselect the `cuda` tests (counted as deselected, never as passed or
    skipped): CI has no GPU, and scripts/gpu_check.py runs them on one."""
    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("cuda")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("cuda")]


def in_ci() -> bool:
    """CI systems set CI to true, 1, yes, or their name: anything but empty, 0 or false."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


NO_CORPUS = "the PTB corpus is not at"  # how a skip for want of it begins


@pytest.fixture(scope="session")
def ptb_dir() -> Path:
    """The real PTB corpus (ptb.train.txt, ptb.valid.txt, ptb.test.txt), read-only.

    Missing files skip the test locally and fail it in CI (CI set, see in_ci), where they must be
    there. The skips are counted at the end of the run (pytest_terminal_summary), never silent.
    """
    missing = [name for name in PTB_FILES if not (PTB_DIR / name).is_file()]
    if missing:
        message = f"{NO_CORPUS} {PTB_DIR} (missing: {', '.join(missing)})"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return PTB_DIR


def pytest_terminal_summary(terminalreporter):
    """One line that says how many tests did not run for want of the real corpus, and where it
    was looked for: they are a good part of what the suite checks."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple) and NO_CORPUS in str(report.longrepr[2])
    ]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} test{'s' if len(skipped) != 1 else ''} skipped: {NO_CORPUS} "
            f"{PTB_DIR}; to run them, put ptb.train.txt, ptb.valid.txt and ptb.test.txt there "
            f"(ptblm download --data-dir {PTB_DIR.parent} fetches them)",
            yellow=True,
            bold=True,
        )


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A folder with a tiny hand-made corpus in PTB's layout; returns the folder."""
    folder = tmp_path / "tiny_corpus"
    folder.mkdir()
    (folder / "ptb.train.txt").write_text(TINY_TRAIN, encoding="utf-8")
    (folder / "ptb.valid.txt").write_text(TINY_VALID, encoding="utf-8")
    (folder / "ptb.test.txt").write_text(TINY_TEST, encoding="utf-8")
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files without logging to stderr; records each request's path."""

    def __init__(self, *args, requests: list[str], **kwargs):
        self._requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self._requests.append(self.path)
        super().do_GET()

    def do_HEAD(self):  # noqa: N802
        self._requests.append(self.path)
        super().do_HEAD()

    def log_message(self, format, *args):  # noqa: A002 (the stdlib's signature)
        pass


class _Servers:
    """`serve_dir(directory)` -> base URL ("http://127.0.0.1:PORT") of a server for that folder.

    `serve_dir.requests(url)` lists the paths requested from the server at that URL so far.
    """

    def __init__(self):
        self._running: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []
        self._requests: dict[str, list[str]] = {}

    def __call__(self, directory: str | os.PathLike) -> str:
        requests: list[str] = []
        handler = functools.partial(_QuietHandler, directory=str(directory), requests=requests)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._running.append((server, thread))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        self._requests[url] = requests
        return url

    def requests(self, url: str) -> list[str]:
        return list(self._requests[url.rstrip("/")])

    def close(self) -> None:
        for server, thread in self._running:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._running.clear()


@pytest.fixture
def serve_dir():
    """A factory: serve_dir(directory) starts an HTTP server on 127.0.0.1 (a free port) serving
    that directory in a daemon thread and returns its base URL; all are shut down at teardown."""
    servers = _Servers()
    yield servers
    servers.close()


class SmallDisks:
    """`small_disk(megabytes)` -> a folder on a tmpfs of that size, to fill a disk for real;
    `small_disk.remount(folder, "size=20m")` or `(folder, "ro")` changes it. Needs root (as CI
    has): where mounting is refused the test fails in CI and skips elsewhere; stand-ins that fail
    writes in-process (test_checkpoint.py, test_run_dir.py) cover the same code on every
    machine."""

    def __init__(self, root: Path):
        self.root, self.mounted = root, []

    def __call__(self, megabytes: float) -> Path:
        folder = self.root / f"disk{len(self.mounted)}"
        folder.mkdir()
        self._mount(folder, f"size={int(megabytes * 1024)}k")
        self.mounted.append(folder)
        return folder

    def remount(self, folder: Path, options: str) -> None:
        self._mount(folder, f"remount,{options}")

    @staticmethod
    def _mount(folder: Path, options: str) -> None:
        command = ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)]
        try:
            result = subprocess.run(command, capture_output=True, text=True)
            refused = result.stderr.strip() if result.returncode else None
        except OSError as error:
            refused = str(error)
        if refused is not None:
            why = f"cannot mount a tmpfs here ({refused}): run the tests as root"
            if in_ci():
                pytest.fail(why)
            pytest.skip(why)

    def close(self) -> None:
        for folder in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disks = SmallDisks(tmp_path)
    yield disks
    disks.close()


# Small settings for runs trained by the CLI tests of eval and generate.
MODEL_SETTINGS = [
    "--set", "hidden_size=16", "--set", "num_steps=5", "--set", "batch_size=4",
    "--set", "max_max_epoch=2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="session")
def two_runs(tmp_path_factory):
    """Two runs of one config and corpus, seeds 1 and 2, and one on another vocabulary."""
    home = tmp_path_factory.mktemp("models")
    corpus = make_corpus(home / "corpus", vocab_size=40)
    with open(corpus / "ptb.train.txt", "a") as train:
        train.write(" <unk> w1 w2 \n")  # PTB's rare-word token, so unknown words can be read
    other = make_corpus(home / "other", vocab_size=30)
    for name, seed, folder, vocab_size, limit in (
        ("a", 1, corpus, 41, []),
        ("b", 2, corpus, 41, []),
        ("other", 1, other, 30, ["--max-steps", "2"]),
    ):
        result = ptblm(
            "train", "-c", "test", *MODEL_SETTINGS, *limit, "--set", f"vocab_size={vocab_size}",
            "--seed", seed, "--corpus", folder, "--name", name, cwd=home,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return home
