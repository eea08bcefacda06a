import errno
import os
import random

import pytest
import torch
from helpers import make_checkpoint

from ptblm.checkpoint import model_from_checkpoint, save_checkpoint
from ptblm.checkpoint_load import load_checkpoint
from ptblm.errors import CheckpointError


def test_round_trip_restores_the_model_exactly(tmp_path):
    checkpoint = make_checkpoint()
    save_checkpoint(tmp_path / "last.pt", checkpoint)
    loaded = load_checkpoint(tmp_path / "last.pt")
    model = model_from_checkpoint(loaded, tmp_path / "last.pt")
    for name, tensor in checkpoint["model"].items():
        assert torch.equal(model.state_dict()[name], tensor)
    assert loaded["vocab"] == checkpoint["vocab"] and loaded["window"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


@pytest.mark.parametrize(
    ("failure", "fix"),
    [
        (OSError(errno.ENOSPC, "No space left on device"), "Free some space"),
        (PermissionError(errno.EPERM, "Operation not permitted"), "Make it writable"),  # chattr +i
        (OSError(errno.EROFS, "Read-only file system"), "Make it writable"),
        (OSError(errno.EIO, "Input/output error"), "Check that disk"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory"), "Put its folder back"),
    ],
)
def test_a_refused_write_keeps_the_previous_checkpoint_and_says_why(
    tmp_path, monkeypatch, failure, fix
):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint())
    before = path.read_bytes()

    def refused(obj, file):
        file.write(b"half a checkpoint")
        raise failure

    monkeypatch.setattr(torch, "save", refused)
    with pytest.raises(CheckpointError, match=f"{failure.strerror}.*intact. {fix} or choose"):
        save_checkpoint(path, make_checkpoint(window=4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_directory_where_the_checkpoint_goes_is_named_as_the_cause(tmp_path):
    """It was blamed on the disk's space, with gigabytes free."""
    (tmp_path / "last.pt").mkdir()
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(tmp_path / "last.pt", make_checkpoint())
    message = str(raised.value)
    assert "(Is a directory)" in message and "Move aside the directory in its place" in message
    assert "space" not in message and "MB free" not in message
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left


def test_a_full_disk_in_torchs_zip_writer_is_the_same_one_line_error(tmp_path, monkeypatch):
    """torch reports ENOSPC from its zip writer as a RuntimeError, which has no strerror."""

    def zip_writer_on_a_full_disk(obj, file):
        file.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", zip_writer_on_a_full_disk)
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint(tmp_path / "last.pt", make_checkpoint())
    message = str(raised.value)
    assert "could not write" in message and "MB free there" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [b"", b"this is not a checkpoint", random.Random(0).randbytes(4096)],
    ids=["empty", "text", "random"],
)
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "best.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable ptblm checkpoint.*this file is none"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, make_checkpoint())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable ptblm checkpoint .truncated"):
        load_checkpoint(path)


class Payload:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save(make_checkpoint(extra=Payload(marker)), path)
    with pytest.raises(CheckpointError, match="refused, not run"):
        load_checkpoint(path)
    assert not marker.exists()
    # The payload is real: an unsafe load runs it.
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"format": 99}, "format 99"),
        ({"vocab": ["a", "b"]}, "vocabulary does not match"),
        ({"config": {"hidden_size": "big"}}, "invalid config"),
        ({"config": None}, "no config"),
    ],
)
def test_inconsistent_checkpoints_are_refused(tmp_path, changes, message):
    path = tmp_path / "last.pt"
    save_checkpoint(path, make_checkpoint(**changes))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    checkpoint = make_checkpoint()
    checkpoint["config"]["hidden_size"] = 3  # the weights are for hidden_size 2
    path = tmp_path / "last.pt"
    save_checkpoint(path, checkpoint)
    with pytest.raises(CheckpointError, match="do not fit its config") as refused:
        model_from_checkpoint(load_checkpoint(path), path)
    assert "size mismatch for embedding.weight" in str(refused.value)  # names the tensor


def test_a_torch_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a ptblm checkpoint"):
        load_checkpoint(path)


def test_a_moved_corpus_is_named_with_the_way_to_pass_it(tmp_path):
    from ptblm.checkpoint import corpus_dir_for
    from ptblm.errors import DataError

    (tmp_path / "mine").mkdir()
    assert corpus_dir_for({"corpus_dir": str(tmp_path / "mine")}, None) == tmp_path / "mine"
    assert corpus_dir_for({"corpus_dir": str(tmp_path / "mine")}, tmp_path / "x") == tmp_path / "x"
    assert corpus_dir_for({"corpus_dir": None}, None) is None  # PTB
    with pytest.raises(DataError, match=r"gone, is no longer there: pass --corpus DIR with it"):
        corpus_dir_for({"corpus_dir": str(tmp_path / "gone")}, None)
