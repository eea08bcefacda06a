import errno
import os

import pytest

from ptblm.config import load_config
from ptblm.errors import CheckpointError, DataError
from ptblm.run_dir import RunDirectory


def test_a_lost_config_yaml_is_written_anew_on_reopen_and_its_failure_names_the_cause(
    tmp_path, monkeypatch
):
    import torch

    from ptblm import run_dir as module
    from ptblm.distributed import SINGLE_PROCESS

    config, cpu = load_config("test"), torch.device("cpu")
    run = RunDirectory(tmp_path / "run")
    run.path.mkdir()
    real_write = module.atomic_write

    def full_disk(path, write):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "atomic_write", full_disk)
    with pytest.raises(
        CheckpointError, match=r"config.yaml \(No space left on device\): free some"
    ):
        run.reopen(config, "ptblm train --resume run", "", SINGLE_PROCESS, cpu)
    run.unlock()
    monkeypatch.setattr(module, "atomic_write", real_write)
    run.reopen(config, "ptblm train --resume run", " --max-steps 9", SINGLE_PROCESS, cpu)
    assert load_config(str(run.path / "config.yaml")) == config
    assert "--resume run" in (run.path / "config.yaml").read_text().splitlines()[1]
    assert (run.path / "config.yaml").read_text().splitlines()[2].endswith(" --max-steps 9")
    run.unlock()


def test_a_lock_that_cannot_be_opened_is_a_checkpoint_error(tmp_path, monkeypatch):
    """The stand-in for a read-only disk where tmpfs cannot be mounted (test_cli_train.py)."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError, match="cannot lock .*Read-only file system.*writable"):
        RunDirectory(tmp_path).lock()


def test_a_lock_held_by_another_process_is_refused_and_let_go(tmp_path):
    """The refused process closes its own handle: it holds nothing of the run afterwards."""
    holder = RunDirectory(tmp_path)
    holder.lock()
    refused = RunDirectory(tmp_path)
    with pytest.raises(CheckpointError, match="another ptblm process is training"):
        refused.lock()
    assert refused._lock is None
    holder.unlock()
    refused.lock()  # once the holder lets go
    refused.unlock()


@pytest.mark.parametrize(
    "failure", [CheckpointError("cannot lock"), OSError(28, "No space left on device")]
)
def test_a_run_directory_that_cannot_be_made_whole_is_not_left_half_made(
    tmp_path, monkeypatch, failure
):
    """Out of inodes, its .lock or config.yaml could not be made: the directory stayed behind,
    and the same --name then said "holds no checkpoint... rm -r"."""
    import torch

    from ptblm.distributed import SINGLE_PROCESS

    def fail(*args, **kwargs):
        raise failure

    run = RunDirectory(tmp_path / "runs" / "x")
    if isinstance(failure, CheckpointError):
        monkeypatch.setattr(RunDirectory, "lock", fail)
    else:  # config.yaml, after the lock was taken
        monkeypatch.setattr("ptblm.run_dir.atomic_write", fail)
    config = load_config("test")
    with pytest.raises(DataError, match=r"cannot create the run directory .*--runs-dir DIR\."):
        run.create(config, "ptblm train", SINGLE_PROCESS, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []  # nor the runs folder made for it


def test_the_train_again_line_pastes_as_it_stands_from_a_folder_with_a_space(tmp_path):
    import shlex

    import torch

    from ptblm.distributed import SINGLE_PROCESS

    run = RunDirectory(tmp_path / "my runs" / "x")
    run.create(load_config("test"), "ptblm train", SINGLE_PROCESS, torch.device("cpu"), "")
    run.unlock()
    header = (run.path / "config.yaml").read_text().splitlines()[2]
    again = shlex.split(header.split("Train again with: ")[1])
    assert again == ["ptblm", "train", "--config", str(run.path / "config.yaml")]


def test_a_name_too_long_for_the_file_system_says_to_shorten_it(tmp_path):
    """A run named after a config file of 245 characters: the fix is --name, not --runs-dir.
    The --runs-dir folders made for it go again too."""
    import torch

    from ptblm.distributed import SINGLE_PROCESS

    run = RunDirectory(tmp_path / "experiments" / "ablation" / ("c" * 300))
    with pytest.raises(DataError, match=r"\(File name too long\)\. Give a shorter --name"):
        run.create(load_config("test"), "ptblm train", SINGLE_PROCESS, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []
