import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci


@pytest.mark.parametrize(
    "value, expected",
    [("true", True), ("1", True), ("yes", True), ("woodpecker", True), ("TRUE", True),
     ("", False), ("0", False), ("false", False), ("False", False), (None, False)],
)  # fmt: skip
def test_any_ci_value_but_empty_0_or_false_counts_as_ci(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert in_ci() is expected


def run_suite_without_the_corpus(tmp_path, ci):
    """A copy of conftest.py and helpers.py in <tmp>/repo/tests, so that the corpus is looked for
    at <tmp>/shared/ptb, where there is none; two tests need it, one does not."""
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    for name in ("conftest.py", "helpers.py"):
        shutil.copy(Path(__file__).parent / name, tests / name)
    (tests / "test_some.py").write_text(
        "def test_one(ptb_dir):\n    pass\n\n\n"
        "def test_two(ptb_dir):\n    pass\n\n\n"
        "def test_without():\n    pass\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tests)],
        cwd=tmp_path / "repo", env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_tests_skipped_for_want_of_the_corpus_are_counted_at_the_end(tmp_path):
    result = run_suite_without_the_corpus(tmp_path, ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    last_lines = result.stdout.splitlines()[-3:]
    where = tmp_path / "shared" / "ptb"
    assert any(f"2 tests skipped: the PTB corpus is not at {where};" in line for line in last_lines)
    assert "1 passed, 2 skipped" in last_lines[-1]


def test_in_ci_a_missing_corpus_fails_the_tests_that_need_it(tmp_path):
    result = run_suite_without_the_corpus(tmp_path, ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed, 2 errors" in result.stdout.splitlines()[-1]
    assert f"the PTB corpus is not at {tmp_path / 'shared' / 'ptb'}" in result.stdout
    assert "tests skipped" not in result.stdout


@pytest.mark.parametrize("turn", ["first", "second, after the first has drawn"])
def test_a_test_starts_from_the_same_random_state_whatever_ran_before(turn):
    import torch

    expected = torch.rand(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.rand(4), expected)
