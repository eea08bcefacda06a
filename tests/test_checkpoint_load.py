"""Reading checkpoints that are damaged or crafted: a short reason for a file torch refuses, and
a position in training (epoch, window, global_step) that is typed and in range."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import assert_clean_failure, make_corpus, ptblm

from ptblm.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from ptblm.config import load_config
from ptblm.errors import CheckpointError
from ptblm.model import LSTMLanguageModel


def crafted(**changes):
    config = load_config("test", ["vocab_size=12"])
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": LSTMLanguageModel.from_config(config).state_dict(),
        "config": config.to_dict(),
        "vocab": [f"w{i}" for i in range(12)],
        "epoch": 0,
        "window": 3,
        "global_step": 3,
    }
    return {**checkpoint, **changes}


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01cposix\nsystem\n"],
    ids=["random", "pickle-opcodes"],
)
def test_a_garbage_file_gets_one_short_reason_without_torchs_paragraph(tmp_path, content):
    """torch.load's refusal opens with a paragraph on its weights_only default (PyTorch 2.6) and
    ends with a link: a ptblm user needs neither, only that the file is not a checkpoint."""
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    message = str(raised.value)
    assert "not a readable ptblm checkpoint" in message
    assert "PyTorch 2.6" not in message and "weights_only" not in message
    assert "\n" not in message and len(message.replace(str(path), "")) < 300


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"epoch": "x"}, "its epoch is 'x', where an integer 0 to max_max_epoch (1) belongs"),
        ({"epoch": 2}, "its epoch is 2, where an integer 0 to max_max_epoch (1)"),
        ({"epoch": 0.5}, "its epoch is 0.5"),
        ({"window": -1}, "its window is -1, where an integer >= 0 belongs"),
        ({"window": True}, "its window is True"),
        ({"global_step": None}, "its global_step is None"),
        ({"global_step": "9" * 200}, "its global_step is '99999999999"),
    ],
)
def test_a_position_in_training_of_the_wrong_type_or_range_is_refused(tmp_path, changes, fragment):
    path = tmp_path / "last.pt"
    torch.save(crafted(**changes), path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert fragment in str(raised.value) and "is damaged" in str(raised.value)
    assert len(str(raised.value)) < 300


def test_a_window_beyond_the_epoch_is_not_resumed(tmp_path):
    """`"window": 10**9` loads (an integer >= 0), but no epoch of this corpus has that many
    windows: resuming it ran on silently. Resume now refuses it."""
    corpus = make_corpus(tmp_path / "corpus", vocab_size=40)
    settings = ["--set", "vocab_size=40", "--set", "hidden_size=8", "--set", "max_max_epoch=2"]
    result = ptblm(
        "train", "-c", "test", *settings, "--max-steps", "3", "--corpus", corpus,
        "--name", "r", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    last = tmp_path / "runs" / "r" / "last.pt"
    checkpoint = torch.load(last, weights_only=True)
    assert 0 < checkpoint["window"] < 10**9
    checkpoint.update(window=10**9, finished=False)
    torch.save(checkpoint, last)
    result = ptblm("train", "--resume", tmp_path / "runs" / "r", cwd=tmp_path)
    assert_clean_failure(result, 1, "cannot be resumed (window 1000000000 of an epoch of")
