"""`ptblm info`'s figures (the command itself: test_cli.py)."""

import os

from ptblm.info import collect, render


def test_cores_are_those_this_process_may_run_on(tmp_path, monkeypatch):
    """Under taskset or a cpuset, info said the machine's count while --threads refused more
    than the cores allowed."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert collect(tmp_path)["cpu"]["cores"] == 1


def test_a_data_dir_that_is_a_file_is_not_sent_to_download(tmp_path):
    """`ptblm download` cannot fetch into a file: info said it would."""
    (tmp_path / "data").write_text("")
    line = render(collect(tmp_path / "data")).splitlines()[-1]
    assert "ptb.train.txt Not a directory" in line
    assert "ptblm download" not in line and "must be a folder" in line


def test_one_file_in_the_way_is_named_not_the_folder(tmp_path):
    (tmp_path / "ptb" / "ptb.train.txt").mkdir(parents=True)
    line = render(collect(tmp_path)).splitlines()[-1]
    assert "ptb.train.txt not a regular file" in line
    assert "(remove ptb.train.txt, then ptblm download fetches them)" in line


def test_one_file_to_fetch_is_it_not_them(tmp_path, ptb_dir):
    folder = tmp_path / "ptb"
    folder.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt"):
        (folder / name).symlink_to(ptb_dir / name)
    line = render(collect(tmp_path)).splitlines()[-1]
    assert line.endswith("ptb.test.txt missing (ptblm download fetches it)")
