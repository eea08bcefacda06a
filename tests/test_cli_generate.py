"""`ptblm generate`, run as a user would: reproducible from its seed, unknown prompt words named,
bad options refused; for a long text, the words show as they are drawn, Ctrl-C keeps them (exit
130), and a reader that goes away (`| head`) ends it quietly."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import as_text, assert_clean_failure, ptblm

from ptblm.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from ptblm.config import load_config
from ptblm.model import LSTMLanguageModel

VOCAB = ["<eos>", "the", "cat", "sat", "on", "mat", "<unk>"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    config = load_config("test", [f"vocab_size={len(VOCAB)}", "hidden_size=8"])
    torch.manual_seed(0)  # the same untrained weights whichever tests ran before
    path = tmp_path_factory.mktemp("model") / "best.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": LSTMLanguageModel.from_config(config).state_dict(),
            "config": config.to_dict(),
            "vocab": VOCAB,
            "epoch": 1,
            "window": 0,
            "global_step": 10,
        },
    )
    return path


def start(checkpoint, *args):
    """generate in a child that hears Ctrl-C: a suite started in the background (`make test &`)
    ignores SIGINT, its children inherit that, and Python then installs no KeyboardInterrupt."""
    return subprocess.Popen(
        [sys.executable, "-m", "ptblm", "generate", str(checkpoint), "--seed", "3", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_words(process, count) -> bytes:
    """stdout until it holds `count` words. Waits on the pipe, not on a clock; the deadline only
    turns a text that is held back until the end (a million words) into a failure, not a hang."""
    out, deadline = b"", time.monotonic() + 120
    while len(out.split()) < count:
        ready, _, _ = select.select([process.stdout], [], [], max(deadline - time.monotonic(), 0))
        assert ready, f"no words on stdout while generating: {out!r}"
        chunk = os.read(process.stdout.fileno(), 4096)
        assert chunk, process.communicate()
        out += chunk
    return out


def test_ctrl_c_keeps_the_words_printed_and_exits_130(checkpoint):
    process = start(checkpoint, "--words", "1000000")
    try:
        shown = read_words(process, 20)
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert b"Traceback" not in stderr
    assert b"stopped by Ctrl-C after" in stderr and b"of 1000000 words" in stderr
    text = (shown + rest).decode()
    assert text.endswith("\n") and len(text.split()) >= 20
    assert set(text.split()) <= set(VOCAB) - {"<eos>"}


def test_a_reader_that_goes_away_ends_it_quietly(checkpoint):
    """`ptblm generate --words 1000000 | head -1`: no BrokenPipeError traceback."""
    process = start(checkpoint, "--words", "1000000")
    try:
        read_words(process, 5)
        process.stdout.close()
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert stderr.decode().strip() == ""


def test_the_streamed_text_is_the_whole_text(checkpoint):
    """Streaming prints what joining the words printed: the prompt, then the sampled words, an
    <eos> as a line break, and one newline at the end."""
    from ptblm.checkpoint import model_from_checkpoint, vocab_dict
    from ptblm.checkpoint_load import load_checkpoint
    from ptblm.generate import sample

    process = start(checkpoint, "--prompt", "the cat", "--words", "300")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    model = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    ids = list(sample(model, vocab_dict(VOCAB), [1, 2], 300, seed=3))
    assert stdout.decode() == as_text(["the", "cat", *(VOCAB[i] for i in ids)]) + "\n"


def test_generate_is_reproducible_and_prints_vocabulary_words(two_runs):
    prompt = "w1 aardvark zebra w2 aardvark"
    args = ["generate", "runs/a", "--prompt", prompt, "--words", "60", "--seed", "5"]
    first, again = ptblm(*args, cwd=two_runs), ptblm(*args, cwd=two_runs)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout != ptblm(*args[:-1], "6", cwd=two_runs).stdout
    notes = [line for line in first.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: 'aardvark', 'zebra' are not in the vocabulary; the model reads them as <unk>."
    ]
    vocabulary = set((two_runs / "corpus" / "ptb.train.txt").read_text().split())
    printed = first.stdout.split()
    assert printed[:5] == ["w1", "<unk>", "<unk>", "w2", "<unk>"]  # the prompt as the model read it
    assert set(printed) <= vocabulary and "<eos>" not in printed
    assert len(printed) + first.stdout.count("\n") - 1 == 5 + 60  # each <eos> a line break


def test_generate_draws_a_fresh_seed_and_prints_it(two_runs):
    """Without --seed: a seed drawn and printed, and that seed gives the same text again."""
    drawn = ptblm("generate", "runs/a", "--words", "30", cwd=two_runs)
    assert drawn.returncode == 0, drawn.stderr
    seed = drawn.stderr.split("seed ")[1].split()[0]
    assert f"(--seed {seed} gives this text again)" in drawn.stderr
    again = ptblm("generate", "runs/a", "--words", "30", "--seed", seed, cwd=two_runs)
    assert again.stdout == drawn.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_generate_on_a_missing_gpu_fails_before_printing_a_seed(two_runs):
    result = ptblm("generate", "runs/a", "--device", "cuda", cwd=two_runs)
    assert_clean_failure(result, 2, "cuda")
    assert "seed" not in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "0"], "--temperature 0.0: it must be > 0"),
        (["--top-k", "-1"], "--top-k -1: it must be >= 0"),
    ],
)
def test_generate_refuses_bad_sampling_options(two_runs, args, message):
    assert_clean_failure(ptblm("generate", "runs/a", *args, cwd=two_runs), 2, message)


def test_a_model_without_eos_is_a_checkpoint_fault(tmp_path):
    """Generation starts from <eos>: a vocabulary without one is the checkpoint's fault (exit 1),
    not the user's options (exit 2)."""
    vocab = [word for word in VOCAB if word != "<eos>"]
    config = load_config("test", [f"vocab_size={len(vocab)}", "hidden_size=8"])
    path = tmp_path / "best.pt"
    save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "model": LSTMLanguageModel.from_config(config).state_dict(),
            "config": config.to_dict(),
            "vocab": vocab,
            "epoch": 1,
            "window": 0,
            "global_step": 10,
        },
    )
    result = ptblm("generate", str(path), "--seed", "1")
    assert_clean_failure(result, 1, "has no <eos>: generation starts from one")


def test_generate_without_a_run_says_which_it_took(two_runs):
    taken = ptblm("generate", "--words", "5", "--seed", "1", cwd=two_runs)
    assert taken.returncode == 0, taken.stderr
    assert "from runs/other/best.pt" in taken.stderr.splitlines()  # the one trained last
    named = ptblm("generate", "runs/a", "--words", "5", "--seed", "1", cwd=two_runs)
    assert not any(line.startswith("from ") for line in named.stderr.splitlines())
