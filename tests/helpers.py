"""Shared test helpers: a small synthetic corpus in PTB's layout, and running the real CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path


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


def ptblm(*args, cwd=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run `python -m ptblm ARGS` as a user would; PTBLM_DATA_URL only if `env` sets it."""
    environment = {key: value for key, value in os.environ.items() if key != "PTBLM_DATA_URL"}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ptblm", *map(str, args)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_clean_failure(result, code, *fragments) -> None:
    """Exit code as given, one message on stderr naming the problem, never a traceback."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
