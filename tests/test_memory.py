"""Sizes a config or a checkpoint asks for, refused with the numbers before anything is allocated:
a model too big for the machine, eval windows whose logits cannot fit."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_clean_failure, make_corpus, ptblm

import ptblm.memory as memory
from ptblm.checkpoint import CHECKPOINT_FORMAT, model_from_checkpoint, vocab_list
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.errors import CheckpointError, ConfigError
from ptblm.evaluate import evaluate_checkpoints
from ptblm.model import LSTMLanguageModel


def checkpoint_of(config, vocab, **config_changes):
    """A checkpoint of a real model, its config then changed (the weights stay)."""
    model = LSTMLanguageModel.from_config(config)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "config": {**config.to_dict(), **config_changes},
        "vocab": vocab,
        "epoch": 1,
        "window": 0,
        "global_step": 40,
    }
    return checkpoint


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("small", []),
        ("test", ["tie_weights=true"]),
        ("medium", ["num_layers=3", "vocab_size=123"]),
    ],
)
def test_the_parameter_count_is_the_models(name, overrides):
    config = load_config(name, overrides)
    model = LSTMLanguageModel.from_config(config)
    assert memory.parameter_count(config) == sum(p.numel() for p in model.parameters())
    assert memory.model_bytes(config) == 4 * memory.parameter_count(config)


def test_the_host_has_memory_available():
    free = memory.available_bytes("cpu")
    assert free is not None and 0 < free


def test_a_container_limit_leaves_what_it_has_not_used(tmp_path):
    (tmp_path / "memory.max").write_text("8000000000\n")
    (tmp_path / "memory.current").write_text("3000000000\n")
    assert memory._cgroup_room(tmp_path) == 5_000_000_000
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the host's figure counts
    assert memory._cgroup_room(tmp_path) is None
    (tmp_path / "memory.max").write_text("garbage\n")
    assert memory._cgroup_room(tmp_path) is None
    assert memory._cgroup_room(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "count, text",
    [
        (64_100_000_000_000, "64.1 TB"),
        (1_234_000_000_000_000, "1,234.0 TB"),
        (14_000_000_000, "14.0 GB"),
        (812_300_000, "812.3 MB"),
        (96_000, "96.0 KB"),
        (0, "0.0 KB"),
    ],
)
def test_sizes_read_as_a_person_writes_them(count, text):
    assert memory.size(count) == text


def test_a_model_too_big_for_the_machine_is_refused_before_allocating(monkeypatch):
    """hidden_size 1,000,000: 64 TB of parameters. Allocating was a traceback (or the OOM
    killer); now one line with both numbers."""
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 8_000_000_000)
    config = load_config("small", ["hidden_size=1000000"])
    with pytest.raises(ConfigError) as raised:
        LSTMLanguageModel.from_config(config)
    message = str(raised.value)
    assert "hidden_size 1000000" in message and "16,020,016,010,000 parameters" in message
    assert "needs about 64.1 TB; this machine has 8.0 GB available." in message
    assert "Use a smaller hidden_size" in message


def test_the_limit_is_what_the_machine_has(monkeypatch):
    """The same model fits with enough memory and is refused with less."""
    config = load_config("test")
    needed = memory.model_bytes(config)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": needed)
    LSTMLanguageModel.from_config(config)
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": needed - 1)
    with pytest.raises(ConfigError) as raised:
        LSTMLanguageModel.from_config(config)
    # memory.size has its own test, with sizes written by hand
    message = str(raised.value)
    assert (
        f"needs about {memory.size(needed)}; this machine has {memory.size(needed - 1)}" in message
    )


def test_training_needs_the_gradients_and_a_window_too(monkeypatch):
    config = load_config("small")
    model_only = memory.model_bytes(config)
    assert memory.training_bytes(config) > 2 * model_only
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": 2 * model_only)
    memory.check_model_fits(config)
    with pytest.raises(ConfigError, match="training a model of hidden_size 200.*batch_size 20"):
        memory.check_training_fits(config, "cpu")


def test_a_checkpoint_asking_for_a_huge_model_is_refused(tmp_path):
    """Its config says hidden_size 2,000,000 (the weights in it are small): eval allocated 28 GB
    for it. Now the checkpoint is named and refused."""
    config = load_config("test", ["vocab_size=12"])
    path = tmp_path / "huge.pt"
    vocab = ["<eos>", *(f"w{i}" for i in range(11))]
    torch.save(checkpoint_of(config, vocab, hidden_size=2_000_000), path)
    with pytest.raises(CheckpointError, match=r"huge\.pt: a model of hidden_size 2000000"):
        model_from_checkpoint(load_checkpoint(path), path)
    result = ptblm("eval", path, cwd=tmp_path)
    assert_clean_failure(result, 1, "hidden_size 2000000", "needs about", "available")
    result = ptblm("generate", path, "--seed", "1", cwd=tmp_path)
    assert_clean_failure(result, 1, "hidden_size 2000000", "needs about", "available")


def test_eval_refuses_a_window_whose_logits_cannot_fit(tmp_path, monkeypatch):
    """`eval --num-steps 1000000` made one window of the whole split: 37 GB of logits for PTB's
    training split. Here the machine is made small instead of the split large."""
    corpus = make_corpus(tmp_path / "corpus", vocab_size=40)
    config = load_config("test", ["vocab_size=40", "hidden_size=8"])
    path = tmp_path / "model.pt"
    data = load_corpus(corpus_dir=corpus, progress=False)
    torch.save(checkpoint_of(config, vocab_list(data.vocab)), path)
    tokens = data.split("train").numel()
    per_token = (2 * 40 + 2 * 8) * 4  # logits and log-softmax, the LSTM's output and input
    budget = 1000 * per_token  # room for windows of 1000 tokens, and the model
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": budget)

    def run(num_steps):
        return evaluate_checkpoints(
            [path], "train", 1, num_steps, corpus_dir=corpus, device=torch.device("cpu")
        )

    assert tokens > 1000
    assert run(1000)["tokens"] == tokens - 1
    with pytest.raises(ConfigError) as raised:
        run(1_000_000)
    message = str(raised.value)
    assert (
        f"--num-steps 1000000 with --batch-size 1 (windows of 1 x {tokens - 1:,} tokens" in message
    )
    assert "Use --num-steps 500 or less." in message  # half of what would just fit
    assert run(500)["tokens"] == tokens - 1
