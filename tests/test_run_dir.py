import errno
import os

import pytest
from helpers import make_checkpoint

from ptblm.checkpoint import save_checkpoint
from ptblm.config import config_to_yaml, load_config
from ptblm.errors import CheckpointError, DataError
from ptblm.run_dir import (
    RunDirectory,
    load_resumable,
    newest_run,
    resolve_checkpoint,
    resumable_checkpoint,
)


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


def test_a_resume_continues_from_best_pt_when_last_pt_could_not_be_written_after_it(tmp_path):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    assert resumable_checkpoint(tmp_path) is None
    save_checkpoint(best, make_checkpoint(epoch=1, window=0, global_step=40))
    assert resumable_checkpoint(tmp_path) == best
    save_checkpoint(last, make_checkpoint(epoch=1, window=0, global_step=40))
    assert resumable_checkpoint(tmp_path) == last  # the same epoch's end: last.pt
    save_checkpoint(last, make_checkpoint(epoch=1, window=10, global_step=50))
    assert resumable_checkpoint(tmp_path) == last
    # best.pt of epoch 2 written, then last.pt's write failed: last.pt is still epoch 1's.
    save_checkpoint(best, make_checkpoint(epoch=2, window=0, global_step=80))
    assert resumable_checkpoint(tmp_path) == best
    # ...or last.pt was saved by a stop during epoch 2's validation: the same step, an epoch less.
    save_checkpoint(last, make_checkpoint(epoch=1, window=40, global_step=80))
    assert resumable_checkpoint(tmp_path) == best


def test_a_copied_run_resumes_from_the_checkpoint_further_in_training(tmp_path):
    """cp -r gives the files new times in whatever order it copies them: a finished run whose
    best epoch came early, copied so that best.pt looks newer, resumed from best.pt and trained
    its last epochs again."""
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    save_checkpoint(last, make_checkpoint(epoch=3, window=0, global_step=120, finished=True))
    save_checkpoint(best, make_checkpoint(epoch=2, window=0, global_step=80))
    os.utime(last, ns=(1, 1))
    assert resumable_checkpoint(tmp_path) == last


def test_a_damaged_last_pt_says_how_to_resume_from_best_pt_and_that_works(tmp_path):
    (tmp_path / "config.yaml").write_text(config_to_yaml(load_config("test", ["vocab_size=12"])))
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    save_checkpoint(best, make_checkpoint())
    last.write_bytes(best.read_bytes()[:1000])  # cut off by a crash
    os.utime(best, ns=(1, 1))
    with pytest.raises(CheckpointError, match="not a readable ptblm checkpoint") as refused:
        load_resumable(tmp_path)
    assert f"(mv {last} {last}.damaged) to resume from best.pt" in str(refused.value)
    last.rename(tmp_path / "last.pt.damaged")  # as told
    checkpoint, config, _ = load_resumable(tmp_path)
    assert (checkpoint["global_step"], config.vocab_size) == (3, 12)
    best.write_bytes(b"")
    with pytest.raises(CheckpointError, match="no other checkpoint to resume from: start it"):
        load_resumable(tmp_path)
    (tmp_path / "last.pt.damaged").rename(last)
    save_checkpoint(last, make_checkpoint())
    os.utime(last, ns=(1, 1))  # the damaged best.pt is the newer one
    with pytest.raises(CheckpointError) as refused:
        load_resumable(tmp_path)
    assert f"(mv {best} {best}.damaged) to resume from last.pt, an older one" in str(refused.value)


def test_a_lock_that_cannot_be_opened_is_a_checkpoint_error(tmp_path, monkeypatch):
    """The stand-in for a read-only disk where tmpfs cannot be mounted (test_cli_faults.py)."""

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError, match="cannot lock .*Read-only file system.*writable"):
        RunDirectory(tmp_path).lock()


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


def test_a_suggested_command_pastes_as_it_stands_for_a_name_with_a_space_or_a_star(tmp_path):
    """`rm -r runs/old run` would have removed runs/old and ./run; `rm -r runs/*` every run."""
    import re
    import shlex

    for name in ("old run", "*"):
        run = tmp_path / name
        run.mkdir()
        (run / "config.yaml").write_text(config_to_yaml(load_config("test")))
        with pytest.raises(CheckpointError, match="holds no checkpoint") as refused:
            load_resumable(run)
        command = re.search(r"\((?:delete the directory first: )?(rm -r .*?)\)", str(refused.value))
        assert shlex.split(command.group(1)) == ["rm", "-r", str(run)]


def test_a_name_too_long_for_the_file_system_says_to_shorten_it(tmp_path):
    """A run named after a config file of 245 characters: the fix is --name, not --runs-dir.
    The --runs-dir folders made for it go again too."""
    import torch

    from ptblm.distributed import SINGLE_PROCESS

    run = RunDirectory(tmp_path / "experiments" / "ablation" / ("c" * 300))
    with pytest.raises(DataError, match=r"\(File name too long\)\. Give a shorter --name"):
        run.create(load_config("test"), "ptblm train", SINGLE_PROCESS, torch.device("cpu"))
    assert list(tmp_path.iterdir()) == []
