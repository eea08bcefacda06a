"""`ptblm eval` of single models, ensembles and text files, run as a user would."""

import json
import math
import re

import pytest
import torch
from helpers import (
    assert_clean_failure,
    make_corpus,
    model_from_file,
    plain_logprobs,
    plain_perplexity,
    ptblm,
    split_ids,
)


def eval_json(home, *args):
    result = ptblm("eval", *args, "--json", cwd=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_ensemble_averages_its_members_probabilities(two_runs):
    """The ensemble's perplexity is that of (p_a + p_b) / 2 at every token, recomputed here from
    each member's own probabilities; the members' geometric mean (averaged log-probabilities) or
    the better member at each token (max) would be other numbers."""
    ensemble = eval_json(two_runs, "runs/a", "runs/b")
    models = [model_from_file(two_runs / f"runs/{name}/best.pt") for name in ("a", "b")]
    ids = split_ids(two_runs / "corpus", "test", two_runs / "runs/a/best.pt")
    a, b = (plain_logprobs(model, ids) for model in models)
    averaged = math.exp(-(torch.logaddexp(a, b) - math.log(2)).mean().item())
    assert ensemble["perplexity"] == pytest.approx(averaged, rel=1e-6)
    assert ensemble["tokens"] == len(ids) - 1
    members = [member["perplexity"] for member in ensemble["members"]]
    assert members == pytest.approx([math.exp(-a.mean().item()), math.exp(-b.mean().item())])
    # The alternatives are 100 times the tolerance away from the average, or more.
    geometric = math.exp(-((a + b) / 2).mean().item())
    best_of_two = math.exp(-torch.maximum(a, b).mean().item())
    for wrong in (geometric, best_of_two):
        assert abs(averaged / wrong - 1) > 1e-4
    shown = ptblm("eval", "runs/a", "runs/b", cwd=two_runs).stdout
    assert f"ensemble of 2 models: {ensemble['perplexity']:.3f}" in shown
    assert f"{members[1]:.3f}  runs/b/best.pt" in shown
    assert "the paper's" not in shown  # the table has no row for this config


@pytest.fixture(scope="module")
def medium_run(tmp_path_factory):
    """One window of the medium config (the tutorial's 2x650 over 10,000 words) on a synthetic
    corpus of 10,000 words: its best.pt and last.pt are two medium models to average."""
    home = tmp_path_factory.mktemp("medium")
    corpus = make_corpus(home / "corpus", vocab_size=10_000, sentences=600)
    result = ptblm(
        "train", "-c", "medium", "--max-steps", "1", "--quiet", "--corpus", corpus,
        "--name", "m", cwd=home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return home


@pytest.mark.parametrize("split, number", [("test", "77.0"), ("valid", "80.6")])
def test_two_medium_models_are_shown_beside_the_papers_two_medium_models(
    medium_run, split, number, monkeypatch, capsys
):
    """docs/reference.md: Zaremba et al.'s 2 medium models averaged, valid 80.6, test 77.0; on
    PTB only: the synthetic corpus stands in for it here (PTB's test pass of two medium models
    takes minutes on a CPU), and through the CLI, where it is what it is, no paper's row."""
    from ptblm.cli_eval import _echo_members
    from ptblm.data import Corpus
    from ptblm.evaluate import evaluate_checkpoints

    members = ["runs/m/best.pt", "runs/m/last.pt"]
    result = ptblm("eval", *members, "--split", split, cwd=medium_run)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].endswith("runs/m/last.pt")  # a member, not the paper
    assert "the paper's" not in result.stdout
    monkeypatch.setattr(Corpus, "is_ptb", True)
    paths = [medium_run / member for member in members]
    evaluated = evaluate_checkpoints(paths, split, corpus_dir=medium_run / "corpus")
    assert evaluated["published"] == {"config": "medium", "members": 2, split: float(number)}
    _echo_members(evaluated["members"], evaluated["published"], split)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"  the paper's 2 medium models averaged: {split} {number}"
    )


def test_reset_each_line_scores_each_line_from_a_fresh_state_through_the_cli(two_runs):
    """Each line's log-probability is that of <eos> + the line + <eos> read from a zero state,
    recomputed here; carried across lines (the default), the second line scores otherwise."""
    lines = ["w1 w2 w3 w1", "w4 w2 w5", "w1 w1 w2"]
    (two_runs / "lines.txt").write_text("".join(line + "\n" for line in lines))
    args = ["runs/a", "--text", "lines.txt", "--per-line"]
    result = ptblm("eval", *args, "--reset-each-line", cwd=two_runs)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(row) for row in result.stdout.splitlines()]
    assert "(each line on its own)" in result.stderr
    model = model_from_file(two_runs / "runs/a/best.pt")
    vocab = torch.load(two_runs / "runs/a/best.pt", weights_only=True)["vocab"]
    for line, row in zip(lines, rows, strict=True):
        ids = torch.tensor([vocab.index(word) for word in ["<eos>", *line.split(), "<eos>"]])
        assert row["tokens"] == len(line.split()) + 1  # every word and the closing <eos>
        assert row["logprob"] == pytest.approx(plain_logprobs(model, ids).sum().item(), rel=1e-5)
    carried = ptblm("eval", *args, cwd=two_runs)
    carried_rows = [json.loads(row) for row in carried.stdout.splitlines()]
    assert carried_rows[1]["logprob"] != pytest.approx(rows[1]["logprob"], rel=1e-3)


def test_cell_runs_the_same_weights_with_the_other_cell_through_the_cli(two_runs):
    """--cell reference: the Python cell on the fused run's weights, the same perplexity (to
    float rounding) as computed here; an unknown cell is a usage error."""
    reference = eval_json(two_runs, "runs/a", "--cell", "reference")
    model = model_from_file(two_runs / "runs/a/best.pt")
    assert (reference["cell"], model.cell) == ("reference", "fused")  # as trained: fused
    independent = plain_perplexity(
        model, split_ids(two_runs / "corpus", "test", two_runs / "runs/a/best.pt")
    )
    assert reference["perplexity"] == pytest.approx(independent, rel=1e-5)
    result = ptblm("eval", "runs/a", "--cell", "lstm", cwd=two_runs)
    assert_clean_failure(result, 2, "--cell lstm: use fused or reference")


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
        (["--reset-each-line"], "--per-line and --reset-each-line go with --text FILE."),
        (["--text", "x.txt", "--batch-size", "4"], "drop --split, --batch-size and --num-steps"),
        (["--text", "x.txt", "--num-steps", "4"], "drop --split, --batch-size and --num-steps"),
        # --data-dir was dropped without a word
        (["--corpus", "corpus", "--data-dir", "d"], "both say where the text is"),
    ],
)
def test_eval_option_misuse_exits_2(two_runs, args, message):
    assert_clean_failure(ptblm("eval", "runs/a", *args, cwd=two_runs), 2, message)


def test_a_batch_too_large_for_the_split_suggests_one_that_fits(two_runs):
    refused = ptblm("eval", "runs/a", "--batch-size", "100000", cwd=two_runs)
    assert_clean_failure(refused, 2, "--batch-size 100000: the test split's")
    largest = int(re.search(r"Use --batch-size (\d+) or less", refused.stderr).group(1))
    assert eval_json(two_runs, "runs/a", "--batch-size", str(largest))["batch_size"] == largest
    assert_clean_failure(
        ptblm("eval", "runs/a", "--batch-size", str(largest + 1), cwd=two_runs), 2, "--num-steps"
    )


def test_a_text_file_given_as_the_run_points_at_text(two_runs):
    (two_runs / "notes.txt").write_text("the cat\n")
    result = ptblm("eval", "notes.txt", cwd=two_runs)
    assert_clean_failure(
        result, 2, "notes.txt is a text file, not a run or checkpoint: score it with "
        "ptblm eval --text notes.txt [RUN_DIR]."
    )  # fmt: skip


def test_eval_json_counts_epochs_as_the_checkpoint_does(two_runs):
    """A finished 2-epoch run: 2 epochs completed, at window 0 (of a third that never starts)."""
    result = eval_json(two_runs, "runs/a")
    assert (result["epochs_completed"], "epoch" in result) == (2, False)


def test_eval_of_a_run_tested_on_a_prefix_scores_the_whole_split_and_says_so(tmp_path, two_runs):
    corpus = make_corpus(tmp_path / "corpus", vocab_size=40)
    result = ptblm(
        "train", "-c", "test", "--set", "vocab_size=40", "--max-steps", "3", "--eval-tokens",
        "100", "--corpus", corpus, "--name", "quick", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Testing (batch size 1, the first 100 tokens of the test stream)" in result.stdout
    summary = json.loads((tmp_path / "runs/quick/summary.json").read_text())
    shown = ptblm("eval", "runs/quick", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (
        "first 100 tokens of the valid and test splits (--eval-tokens); this is the whole test split"
        in (shown.stderr)
    )
    scored = eval_json(tmp_path, "runs/quick")
    as_json = ptblm("eval", "runs/quick", "--json", cwd=tmp_path)  # said on stderr all the same
    assert "(--eval-tokens); this is the whole test split" in as_json.stderr
    model = model_from_file(tmp_path / "runs/quick/best.pt")
    ids = split_ids(corpus, "test", tmp_path / "runs/quick/best.pt")
    assert scored["run_eval_tokens"] == 100 and scored["tokens"] == len(ids) - 1
    assert scored["perplexity"] == pytest.approx(plain_perplexity(model, ids), rel=1e-6)
    assert scored["perplexity"] != pytest.approx(summary["best_test_ppl"], rel=1e-3)
    full = ptblm("eval", "runs/a", cwd=two_runs)
    assert full.returncode == 0 and "--eval-tokens" not in full.stderr
    assert eval_json(two_runs, "runs/a")["run_eval_tokens"] is None
    adapted = ptblm("eval", "runs/quick", "--cache", cwd=tmp_path)
    assert adapted.returncode == 0 and "(--eval-tokens); this is the whole test split" in (
        adapted.stderr
    )
    assert eval_json(tmp_path, "runs/quick", "--cache")["run_eval_tokens"] == 100
    trained = ptblm("eval", "runs/quick", "--split", "train", cwd=tmp_path)
    assert trained.returncode == 0 and "--eval-tokens" not in trained.stderr  # trained on it all
    ensemble = eval_json(tmp_path, "runs/quick", "runs/quick/last.pt")
    assert [member["run_eval_tokens"] for member in ensemble["members"]] == [100, 100]
    shown = ptblm("eval", "runs/quick", "runs/quick/last.pt", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Note: 2 of its 2 members' runs validated and tested on the first 100 tokens" in (
        shown.stderr
    )


def test_a_window_longer_than_a_row_is_refused_not_a_nan_or_a_traceback(two_runs):
    """With a batch only full windows count: --num-steps past a row's length left none, and
    eval said "nan over 0 tokens" with exit 0 (an ensemble: a traceback)."""
    tokens = len(split_ids(two_runs / "corpus", "test", two_runs / "runs/a/best.pt"))
    row = tokens // 4
    for runs in (["runs/a"], ["runs/a", "runs/b"]):
        refused = ptblm("eval", *runs, "--batch-size", 4, "--num-steps", row, cwd=two_runs)
        assert_clean_failure(refused, 2, f"rows of {row:,}", f"Use --num-steps {row - 1} or less.")
        longest = eval_json(two_runs, *runs, "--batch-size", "4", "--num-steps", str(row - 1))
        assert longest["tokens"] == 4 * (row - 1) and math.isfinite(longest["perplexity"])


def test_a_run_that_diverged_before_its_first_checkpoint_says_so(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", vocab_size=40)
    trained = ptblm(
        "train", "-c", "test", "--set", "vocab_size=40", "--set", "learning_rate=1e30",
        "--set", "max_grad_norm=1e30", "--quiet", "--corpus", corpus, "--name", "wild",
        cwd=tmp_path,
    )  # fmt: skip
    assert_clean_failure(trained, 1, "training diverged at step", "No checkpoint was saved")
    step = json.loads((tmp_path / "runs/wild/summary.json").read_text())["diverged_at_step"]
    assert_clean_failure(
        ptblm("eval", "runs/wild", cwd=tmp_path), 1,
        f"runs/wild diverged at step {step} before its first checkpoint: it has no weights",
    )  # fmt: skip


def test_the_help_states_the_adaptive_settings_defaults_and_limits():
    from ptblm.cache import WINDOW_MAX, CacheSettings
    from ptblm.dynamic import DynamicSettings
    from ptblm.evaluate import TEST_NUM_STEPS

    result = ptblm("eval", "--help")
    assert result.returncode == 0, result.stderr
    words = " ".join(result.stdout.split())  # as wrapped to any width
    options = {
        option: words.split(f" {option} ")[1].split(" --")[0]
        for option in ("--cache-window", "--cache-theta", "--cache-lambda", "--dynamic-lr",
                       "--dynamic-decay", "--dynamic-segment")
    }  # fmt: skip
    cache, dynamic = CacheSettings(), DynamicSettings()
    for option, value in (
        ("--cache-window", cache.window),
        ("--cache-theta", cache.theta),
        ("--cache-lambda", cache.lam),
        ("--dynamic-lr", dynamic.lr),
        ("--dynamic-decay", dynamic.decay),
        ("--dynamic-segment", dynamic.segment),
    ):
        assert f"(default {value:g})" in options[option], options[option]
    assert f"1 to {TEST_NUM_STEPS} " in options["--dynamic-segment"]
    assert f"1 to {WINDOW_MAX:,} " in options["--cache-window"]
