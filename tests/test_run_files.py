import json
import os

import pytest

from ptblm.errors import CheckpointError
from ptblm.run_files import config_name_of, newest_run, resolve_checkpoint


def run(folder, command, summary=None):
    """A run directory as `ptblm train` leaves it: config.yaml headed by its command line."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"# Resolved config of this run (ptblm 0.1.0), written by:\n#   {command}\nseed: 0\n"
    )
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_config_name_of_a_run(tmp_path):
    assert (
        config_name_of(run(tmp_path / "a", "ptblm train --config small --max-steps 3")) == "small"
    )
    assert (
        config_name_of(run(tmp_path / "b", "ptblm train --max-steps 3 -c my/tiny.yaml")) == "tiny"
    )
    assert config_name_of(run(tmp_path / "c", "ptblm train --config=medium")) == "medium"
    # A path with a space, quoted as the header writes it (it gave "'my")
    spaced = run(tmp_path / "s", "ptblm train --config 'my configs/wide.yaml'")
    assert config_name_of(spaced) == "wide"
    # A header edited out of shlex's reach still gives a name, not an exception
    assert config_name_of(run(tmp_path / "q", "ptblm train -c 'unclosed.yaml")) == "unclosed"
    named = run(tmp_path / "d", "ptblm train --config x.yaml", summary={"config_name": "large"})
    assert config_name_of(named) == "large"  # summary.json says, when there is one
    assert config_name_of(run(tmp_path / "e", "ptblm train --resume runs/x")) is None
    assert config_name_of(tmp_path / "nothing") is None


def test_a_run_started_from_another_runs_config_yaml_takes_that_runs_name(tmp_path):
    first = run(tmp_path / "first", "ptblm train --config small")
    second = run(tmp_path / "second", f"ptblm train --config {first / 'config.yaml'}")
    third = run(tmp_path / "third", f"ptblm train --config {second / 'config.yaml'}")
    assert config_name_of(third) == "small"  # neither wrote a summary.json yet
    loop = run(tmp_path / "loop", f"ptblm train --config {tmp_path / 'loop' / 'config.yaml'}")
    assert config_name_of(loop) == "config"  # a header naming itself ends, with the file's stem


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
    (tmp_path / "dangling").mkdir()
    (tmp_path / "dangling" / "last.pt").symlink_to(tmp_path / "gone.pt")
    assert resolve_checkpoint(None, tmp_path) == new / "best.pt"  # not a FileNotFoundError
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a ptblm run directory"):
        resolve_checkpoint(tmp_path / "empty", tmp_path)
    (tmp_path / "early").mkdir()  # a run killed (or still training) before its first checkpoint
    (tmp_path / "early" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(CheckpointError, match="holds no checkpoint yet: a run saves one"):
        resolve_checkpoint(tmp_path / "early", tmp_path)
    with pytest.raises(CheckpointError, match="no such"):
        resolve_checkpoint(tmp_path / "nope", tmp_path)
