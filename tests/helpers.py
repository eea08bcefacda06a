"""Shared test helpers: a small synthetic corpus in PTB's layout, running the real CLI, plain
re-implementations to check ptblm's results against, and text held as a string for ptblm.text."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# docs/reference.md, "Data", typed by hand.
PTB_SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
PTB_BYTES = {"ptb.train.txt": 5_101_618, "ptb.valid.txt": 399_782, "ptb.test.txt": 449_945}
PTB_TOKENS = {"train": 929_589, "valid": 73_760, "test": 82_430}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_corpus(folder: Path, vocab_size: int = 40, sentences: int = 300, seed: int = 0) -> Path:
    """Write ptb.{train,valid,test}.txt into folder; every word of valid/test occurs in train.

    The vocabulary is vocab_size - 1 words plus <eos>, so `--set vocab_size=<vocab_size>` fits.
    """
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(vocab_size - 1)]
    folder.mkdir(parents=True, exist_ok=True)

    def sentence() -> str:
        # Zipf-like: frequent words early, so the model has something to learn.
        length = rng.randint(3, 12)
        return (
            " "
            + " ".join(
                words[min(int(rng.paretovariate(1.2)) - 1, len(words) - 1)] for _ in range(length)
            )
            + " "
        )

    train = [" " + " ".join(words) + " "] + [sentence() for _ in range(sentences)]
    for split, lines in (
        ("train", train),
        ("valid", [sentence() for _ in range(sentences // 5)]),
        ("test", [sentence() for _ in range(sentences // 5)]),
    ):
        (folder / f"ptb.{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# The tests' mirrors are servers on 127.0.0.1: a proxy set for the machine must not stand between.
LOCAL_WITHOUT_PROXY = {"no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost"}


def ptblm(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m ptblm ARGS` as a user would; PTBLM_DATA_URL only if `env` sets it.

    Without `cwd` it runs in an empty folder of its own and must leave it empty: a command that
    wrote to a default place (./runs, ./data) where the test gave it another would otherwise
    write into the checkout, unseen."""
    environment = {key: value for key, value in os.environ.items() if key != "PTBLM_DATA_URL"}
    environment.update(LOCAL_WITHOUT_PROXY, **(env or {}))
    # Importable from any folder, installed or not (the GPU machine runs the checkout as it is).
    paths = [environment.get("PYTHONPATH"), str(Path(__file__).resolve().parents[1])]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    with tempfile.TemporaryDirectory(prefix="ptblm-cwd-") as own:
        result = subprocess.run(
            [sys.executable, "-m", "ptblm", *map(str, args)],
            cwd=cwd or own,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        left = sorted(path.name for path in Path(own).iterdir())
    assert cwd or not left, f"ptblm {' '.join(map(str, args))} wrote {left} into its working folder"
    return result


def assert_clean_failure(result, code, *fragments) -> None:
    """Exit code as given, one message on stderr naming the problem, never a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def cpu_has_native_bf16_by_its_flags() -> bool:
    """Read /proc/cpuinfo here, independently of ptblm: AVX-512 BF16 or AMX."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def model_from_file(path):
    """The model a checkpoint file holds, in eval mode (read here with torch.load, not through
    ptblm's checkpoint code)."""
    import torch

    from ptblm.config import build_config
    from ptblm.model import LSTMLanguageModel

    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = LSTMLanguageModel.from_config(build_config(saved["config"]))
    model.load_state_dict(saved["model"])
    return model.eval()


def plain_logprobs(model, ids):
    """log p of every token of the 1-D stream `ids` after the first, the test protocol written
    out independently of ptblm's evaluation: one row, one forward over the whole stream from a
    zero state, no batchify, no windows. float64, one value per predicted token."""
    import torch

    zeros = torch.zeros(model.num_layers, 1, model.hidden_size)
    with torch.no_grad():
        logits, _ = model.eval()(ids[None, :-1], (zeros, zeros.clone()))
    logprobs = torch.log_softmax(logits[0].double(), dim=-1)
    return logprobs.gather(1, ids[1:, None])[:, 0]


def split_ids(corpus_folder, split, checkpoint):
    """A split of a corpus folder as ids of a checkpoint's vocabulary, tokenized here (PTB's
    way: each newline is <eos>), not by ptblm's data code."""
    import torch

    words = (Path(corpus_folder) / f"ptb.{split}.txt").read_text().replace("\n", " <eos> ")
    vocab = torch.load(checkpoint, map_location="cpu", weights_only=True)["vocab"]
    index = {word: number for number, word in enumerate(vocab)}
    return torch.tensor([index[word] for word in words.split()])


def plain_perplexity(model, ids) -> float:
    """exp(mean NLL) of plain_logprobs."""
    import math

    return math.exp(-plain_logprobs(model, ids).mean().item())


HOLD = Path(__file__).resolve().parent / "hold.py"


def hangup_as_in_a_terminal() -> None:
    """SIGHUP's default disposition in a child: under `nohup make test` it arrives ignored, which
    ptblm rightly keeps, so the tests that hang a run up would see no hangup at all."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class HeldRun:
    """`ptblm train` in a subprocess that stops at the given hold points (see hold.py) until
    released: the test kills or signals it at an exact place in the run, not after a sleep.

    `args`: other `ptblm` arguments than a new run's (e.g. ["train", "--resume", RUN]).
    `processes`: under torchrun with that many ranks; then only rank `hold_rank` holds."""

    def __init__(
        self, corpus, runs, name, *points, settings=(), args=None, processes=1, hold_rank=0
    ):
        self.holds = runs / f"holds-{name}"
        self.holds.mkdir()
        if args is None:
            args = ["train", "-c", "test", *settings]
            args += ["--corpus", str(corpus), "--runs-dir", str(runs), "--name", name]
        env = dict(os.environ, PTBLM_HOLD=",".join(points), PTBLM_HOLD_DIR=str(self.holds))
        launcher = [sys.executable]
        if processes > 1:
            launcher += ["-m", "torch.distributed.run", "--standalone"]
            launcher += [f"--nproc_per_node={processes}"]
            env.update(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", PTBLM_HOLD_RANK=str(hold_rank))
        command = [*launcher, str(HOLD), *map(str, args)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            preexec_fn=hangup_as_in_a_terminal,
        )  # fmt: skip
        self.stderr_read = ""  # what wait_for_stderr has read so far

    def wait_for_stderr(self, fragment):
        """Read the run's stderr until a line holds `fragment` (e.g. the line a signal handler
        writes: the signal has been handled); a run that ends first fails the test, and so does
        one that stays silent for two minutes (it is killed then, which ends the read)."""
        import threading

        timer = threading.Timer(120, self.process.kill)
        timer.start()
        try:
            while True:
                line = self.process.stderr.readline()
                assert line, f"the run ended without saying {fragment!r}: {self.stderr_read}"
                self.stderr_read += line
                if fragment in line:
                    return
        finally:
            timer.cancel()

    def wait_held(self, index=0):
        """Until the run reaches its index-th hold point (a hang fails after two minutes)."""
        deadline = time.monotonic() + 120
        while not (self.holds / f"held-{index}").exists():
            assert self.process.poll() is None, self.process.communicate()
            assert time.monotonic() < deadline, "the run never reached its hold point"
            time.sleep(0.02)

    def held_pid(self, index=0) -> int:
        """The process that holds at the index-th point (under torchrun: that rank's worker)."""
        return int((self.holds / f"held-{index}").read_text())

    def release(self, index=0):
        (self.holds / f"release-{index}").touch()

    def send(self, signum):
        self.process.send_signal(signum)

    def finish(self):
        stdout, stderr = self.process.communicate(timeout=120)
        return self.process.returncode, stdout, self.stderr_read + stderr


def make_checkpoint(vocab_size=12, **changes) -> dict:
    """The fewest keys load_checkpoint accepts, for the test config: at step 3 of epoch 1."""
    from ptblm.checkpoint import CHECKPOINT_FORMAT
    from ptblm.config import load_config
    from ptblm.model import LSTMLanguageModel
    from ptblm.runtime import rng_state

    config = load_config("test", [f"vocab_size={vocab_size}"])
    model = LSTMLanguageModel.from_config(config)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": config.to_dict(),
        "vocab": [f"w{i}" for i in range(vocab_size)],
        "epoch": 0,
        "window": 3,
        "global_step": 3,
        "rng": rng_state(),
    }
    checkpoint.update(changes)
    return checkpoint


def text_lines(text: str):
    """A text's lines as ptblm.text.read_lines gives a file's: each with the newline that ends it
    (the last may have none)."""
    *ended, last = text.split("\n")
    yield from (line + "\n" for line in ended)
    if last:
        yield last


def split_lines(text: str, vocab: dict):
    """The text's lines as ptblm.text.Line objects."""
    from ptblm.text import to_line

    return [to_line(number, line, vocab) for number, line in enumerate(text_lines(text))]


def score_text(models, vocab, text: str, reset_each_line: bool = False):
    """(total, rows) of a text held as a string, as `ptblm eval --text` scores a file."""
    from ptblm.text import TextScorer

    scorer = TextScorer(models, vocab, reset_each_line)
    rows = list(scorer.rows(text_lines(text)))
    return scorer.total, rows


def as_text(words: list[str]) -> str:
    """The words joined as a whole, the oracle for generate's streaming: spaces between words,
    each `<eos>` a line break."""
    lines, line = [], []
    for word in words:
        if word == "<eos>":
            lines.append(" ".join(line))
            line = []
        else:
            line.append(word)
    return "\n".join([*lines, " ".join(line)])


def tiny_model(seed: int = 0):
    """An untrained model of 30 words, 2 layers of 12 units (keep_prob 1, init_scale 0.1)."""
    import torch

    from ptblm.model import LSTMLanguageModel

    torch.manual_seed(seed)
    return LSTMLanguageModel(30, 12, 2, 1.0, 0.1)
