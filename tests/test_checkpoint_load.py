"""Reading checkpoints that are damaged or crafted: a short reason for a file torch refuses, and
a position in training (epoch, window, global_step) that is typed and in range."""

from __future__ import annotations

import random
import shutil

import pytest
import torch
from helpers import assert_clean_failure, make_corpus, ptblm

from ptblm.checkpoint import CHECKPOINT_FORMAT
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.errors import CheckpointError
from ptblm.model import LSTMLanguageModel
from ptblm.resume import load_resumable
from ptblm.train import Trainer


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
    [random.Random(0).randbytes(4096), b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01cposix\nsystem\n"],
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


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_that_are_not_finite_are_refused(tmp_path, value):
    """Evaluated, such a file printed "test perplexity nan" and exit 0."""
    checkpoint = crafted()
    name = "embedding.weight"
    checkpoint["model"][name][3, 1] = value
    path = tmp_path / "best.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert f"is damaged: its {name} holds NaN or infinite values" in str(raised.value)
    checkpoint["model"][name][3, 1] = 0.0
    torch.save(checkpoint, path)
    assert load_checkpoint(path)["model"][name][3, 1] == 0.0


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run cut short after 3 windows (mid-epoch: its last.pt carries the LSTM state)."""
    home = tmp_path_factory.mktemp("stopped")
    corpus = make_corpus(home / "corpus", vocab_size=40)
    settings = ["--set", "vocab_size=40", "--set", "hidden_size=8", "--set", "max_max_epoch=2"]
    result = ptblm(
        "train", "-c", "test", *settings, "--max-steps", "3", "--corpus", corpus,
        "--name", "r", "--quiet", cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return home / "runs" / "r"


def without(key):
    def damage(checkpoint):
        del checkpoint[key]

    return damage


def widen_the_state(checkpoint):
    checkpoint["state"] = [torch.cat([t, t], dim=2) for t in checkpoint["state"]]


def widen_c(checkpoint):
    h, c = checkpoint["state"]
    checkpoint["state"] = [h, torch.cat([c, c], dim=2)]


@pytest.mark.parametrize(
    "damage, fragment",
    [
        # Loads (an integer >= 0), but no epoch of this corpus has that many windows: resuming
        # it ran on silently.
        (lambda c: c.update(window=10**9), "(window 1000000000 of an epoch of"),
        # configs/test.yaml: 1 layer, batch_size 20; hidden_size 8, widened to 16
        (widen_the_state, "(carried state of shapes [(1, 20, 16), (1, 20, 16)])"),
        # c alone: it failed later, inside training, as a RuntimeError
        (widen_c, "(carried state of shapes [(1, 20, 8), (1, 20, 16)])"),
        (lambda c: c.update(state=c["state"][:1]), "(carried state of shapes [(1, 20, 8)])"),
        (without("optimizer"), "(missing 'optimizer')"),
        (without("rng"), "(missing 'rng')"),
        (lambda c: c.update(optimizer="sgd"), "('str' object has no attribute"),
        # RunState's fields, which failed deep inside training or ran on silently
        (lambda c: c.update(history="x"), "(its history is 'x')"),
        (lambda c: c.update(best_valid_ppl="low"), "(its best_valid_ppl is 'low')"),
        (lambda c: c.update(interval_seconds=-1.0), "(its interval_seconds is -1.0)"),
        (lambda c: c.update(train_seconds=float("nan")), "(its train_seconds is nan)"),
        (lambda c: c.update(train_nll="x"), "(its train_nll is 'x')"),
        (lambda c: c.update(norm_sum="x"), "(its norm_sum is 'x')"),
        (lambda c: c.update(eval_tokens=-5), "(its eval_tokens is -5)"),
        (lambda c: c.update(max_steps=True), "(its max_steps is True)"),
        (lambda c: c.update(finished=1), "(its finished is 1)"),
        (lambda c: c.update(stalled_since=0), "(its stalled_since is 0)"),
        (
            lambda c: c.update(windows_by_threads={"2": "x"}),
            "(its windows_by_threads is {'2': 'x'})",
        ),
        (lambda c: c.update(windows_by_threads={2: 5}), "(its windows_by_threads is {2: 5})"),
    ],
)
def test_a_checkpoint_that_loads_but_cannot_continue_is_not_resumed(
    stopped_run, tmp_path, damage, fragment
):
    """In-process, as `ptblm train --resume` does it (the command itself: the test below)."""
    run = damaged_copy(stopped_run, tmp_path, damage)
    before = (run / "last.pt").read_bytes()
    checkpoint, config, path = load_resumable(run)
    corpus = load_corpus(corpus_dir=stopped_run.parents[1] / "corpus")
    with pytest.raises(CheckpointError) as raised:
        Trainer(config, corpus, run, torch.device("cpu"), verbose=False, resume=(checkpoint, path))
    assert f"{run / 'last.pt'} cannot be resumed {fragment}" in str(raised.value)
    assert "Start a new run." in str(raised.value)
    assert (run / "last.pt").read_bytes() == before  # refused before anything was written


def test_ptblm_train_refuses_such_a_checkpoint_in_one_line(stopped_run, tmp_path):
    run = damaged_copy(stopped_run, tmp_path, lambda c: c.update(window=10**9))
    before = (run / "last.pt").read_bytes()
    result = ptblm("train", "--resume", run, cwd=tmp_path)
    assert_clean_failure(result, 1, f"{run / 'last.pt'} cannot be resumed (window 1000000000")
    assert "Start a new run." in result.stderr
    assert (run / "last.pt").read_bytes() == before


def damaged_copy(stopped_run, tmp_path, damage):
    """A copy of the stopped run, its last.pt (mid-epoch) changed by `damage`."""
    run = shutil.copytree(stopped_run, tmp_path / "r")
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert 0 < checkpoint["window"] and checkpoint["state"] is not None
    checkpoint["finished"] = False
    damage(checkpoint)
    torch.save(checkpoint, run / "last.pt")
    return run


def test_the_refusal_names_best_pt_when_that_is_the_checkpoint_resumed(stopped_run, tmp_path):
    """With last.pt lost, --resume continues from best.pt: its refusal named last.pt."""
    run = shutil.copytree(stopped_run, tmp_path / "r")
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    checkpoint.update(finished=False, window=10**9)
    torch.save(checkpoint, run / "best.pt")
    (run / "last.pt").unlink()
    result = ptblm("train", "--resume", run, cwd=tmp_path)
    assert_clean_failure(result, 1, f"{run / 'best.pt'} cannot be resumed (window 1000000000")


@pytest.mark.parametrize(
    "convert",
    [
        lambda t: t.long(),
        lambda t: t.to(torch.complex64),
        lambda t: t.to_sparse(),
        lambda t: torch.empty_like(t, device="meta"),
    ],
    ids=["int64", "complex", "sparse", "meta"],
)
def test_weights_that_no_model_saves_are_refused_not_a_traceback(tmp_path, convert):
    """An integer embedding evaluated to a wrong perplexity with exit 0; sparse and meta tensors
    were a traceback; a complex one printed torch's warning."""
    checkpoint = crafted()
    checkpoint["model"]["embedding.weight"] = convert(checkpoint["model"]["embedding.weight"])
    path = tmp_path / "best.pt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="its embedding.weight is a .* where dense floating"):
        load_checkpoint(path)


def test_a_bit_flipped_on_disk_is_found_by_the_archives_checksums(tmp_path):
    """torch.load does not check the CRC-32 that torch.save records: a flipped bit loaded as a
    slightly different model, and a resume ran on with it."""
    import struct
    import zipfile

    path = tmp_path / "last.pt"
    torch.save(crafted(), path)
    load_checkpoint(path)
    with zipfile.ZipFile(path) as archive:
        tensors = [info for info in archive.infolist() if "/data/" in info.filename]
        entry = max(tensors, key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", data[entry.header_offset + 26 : entry.header_offset + 30]
    )
    data[entry.header_offset + 30 + name_length + extra_length + 5] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"damaged: {entry.filename} fails its checksum"):
        load_checkpoint(path)


def test_a_file_in_torchs_legacy_format_is_not_called_damaged(tmp_path):
    """It has no CRCs to check: the checksum check said it "changed on disk"."""
    path = tmp_path / "old.pt"
    torch.save({"model": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="is a torch file but not a ptblm checkpoint"):
        load_checkpoint(path)


def test_tied_weights_that_differ_do_not_fit_the_config(tmp_path):
    """tie_weights set on an untied model's file: the decoder overwrote the embedding, silently."""
    from ptblm.checkpoint import model_from_checkpoint

    checkpoint = crafted()
    checkpoint["config"]["tie_weights"] = True
    checkpoint["config"]["hidden_size"] = 2  # the test config's: the tied shapes fit
    with pytest.raises(CheckpointError, match="its weights do not fit its config .*differ"):
        model_from_checkpoint(checkpoint, tmp_path / "best.pt")
    checkpoint["model"]["decoder.weight"] = checkpoint["model"]["embedding.weight"]
    model = model_from_checkpoint(checkpoint, tmp_path / "best.pt")
    assert model.decoder.weight is model.embedding.weight
