import os

import pytest

from ptblm.errors import CheckpointError
from ptblm.runs import newest_run, resolve_checkpoint


def test_resolving_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no run with a checkpoint"):
        newest_run(tmp_path)
    old, new = tmp_path / "a", tmp_path / "b"
    for run in (old, new):
        run.mkdir()
    (old / "best.pt").write_bytes(b"x")
    (new / "last.pt").write_bytes(b"x")
    os.utime(old / "best.pt", (1, 1))
    assert resolve_checkpoint(None, tmp_path) == new / "last.pt"
    (new / "best.pt").write_bytes(b"x")
    assert resolve_checkpoint(new, tmp_path) == new / "best.pt"
    assert resolve_checkpoint(old / "best.pt", tmp_path) == old / "best.pt"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a ptblm run directory"):
        resolve_checkpoint(tmp_path / "empty", tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        resolve_checkpoint(tmp_path / "nope", tmp_path)
