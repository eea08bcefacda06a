"""`ptblm eval` of single models, ensembles and text files, run as a user would."""

import json
import math

import pytest
from helpers import assert_clean_failure, ptblm


def eval_json(home, *args):
    result = ptblm("eval", *args, "--json", cwd=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_ensemble_of_two_beats_both_members(two_runs):
    ensemble = eval_json(two_runs, "runs/a", "runs/b")
    alone = [eval_json(two_runs, f"runs/{name}")["perplexity"] for name in ("a", "b")]
    members = [member["perplexity"] for member in ensemble["members"]]
    assert members == pytest.approx(alone, rel=1e-6)  # each member as `ptblm eval` scores it
    # Below the members' geometric mean, always (Jensen). Below both members takes members of
    # equal quality that err differently: the two PTB small two_runs of the README show it.
    assert math.log(ensemble["perplexity"]) < sum(math.log(ppl) for ppl in alone) / 2
    assert ensemble["tokens"] == eval_json(two_runs, "runs/a")["tokens"]
    shown = ptblm("eval", "runs/a", "runs/b", cwd=two_runs).stdout
    assert f"ensemble of 2 models: {ensemble['perplexity']:.3f}" in shown
    assert f"{members[1]:.3f}  runs/b/best.pt" in shown


def test_an_ensemble_of_another_vocabulary_is_refused(two_runs):
    result = ptblm("eval", "runs/a", "runs/other", cwd=two_runs)
    assert_clean_failure(result, 1, "different vocabularies")


def test_text_with_unknown_words(two_runs):
    (two_runs / "mine.txt").write_text("w1 w2 zebra w3\nw4 okapi\n")
    total = eval_json(two_runs, "runs/a", "--text", "mine.txt")
    assert (total["unknown_words"], total["words"], total["tokens"]) == (2, 6, 7)
    result = ptblm("eval", "runs/a", "--text", "mine.txt", "--per-line", cwd=two_runs)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["unknown"] for line in lines] == [["zebra"], ["okapi"]]
    assert sum(line["logprob"] for line in lines) == pytest.approx(total["logprob"], rel=1e-9)
    assert "2 of 6 words (33.33%) not in the vocabulary" in result.stderr  # stdout: JSON only


@pytest.mark.parametrize(
    "content, code, message",
    [
        (b"", 1, "has no words to score"),
        (b"\x7fELF\x02\x01\x01\x00\x00", 1, "is a binary file"),
        (b"na\xefve\n", 1, "is not UTF-8 text"),
    ],
)
def test_bad_text_files_are_refused(two_runs, content, code, message):
    (two_runs / "bad.txt").write_bytes(content)
    assert_clean_failure(ptblm("eval", "runs/a", "--text", "bad.txt", cwd=two_runs), code, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-line"], "go with --text"),
        (["--text", "x.txt", "--split", "valid"], "drop --split"),
        (["--split", "dev"], "--split dev: use test, valid or train"),
    ],
)
def test_eval_option_misuse_exits_2(two_runs, args, message):
    assert_clean_failure(ptblm("eval", "runs/a", *args, cwd=two_runs), 2, message)


def test_eval_json_counts_epochs_as_the_checkpoint_does(two_runs):
    """A finished 2-epoch run: 2 epochs completed, at window 0 (of a third that never starts)."""
    result = eval_json(two_runs, "runs/a")
    assert (result["epochs_completed"], "epoch" in result) == (2, False)
