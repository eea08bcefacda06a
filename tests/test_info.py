"""`ptblm info`'s figures (the command itself: test_cli.py)."""

import os

from ptblm.info import collect


def test_cores_are_those_this_process_may_run_on(tmp_path, monkeypatch):
    """Under taskset or a cpuset, info said the machine's count while --threads refused more
    than the cores allowed."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert collect(tmp_path)["cpu"]["cores"] == 1
