"""`ptblm eval` of ensembles and text files, and `ptblm generate`, run as a user would."""

import json
import math

import pytest
from helpers import assert_clean_failure, make_corpus, ptblm

SETTINGS = [
    "--set", "hidden_size=16", "--set", "num_steps=5", "--set", "batch_size=4",
    "--set", "max_max_epoch=2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs of one config and corpus, seeds 1 and 2, and one on another vocabulary."""
    home = tmp_path_factory.mktemp("models")
    corpus = make_corpus(home / "corpus", vocab_size=40)
    with open(corpus / "ptb.train.txt", "a") as train:
        train.write(" <unk> w1 w2 \n")  # PTB's rare-word token, so unknown words can be read
    other = make_corpus(home / "other", vocab_size=30)
    for name, seed, folder, vocab_size, limit in (
        ("a", 1, corpus, 41, []),
        ("b", 2, corpus, 41, []),
        ("other", 1, other, 30, ["--max-steps", "2"]),
    ):
        result = ptblm(
            "train", "-c", "test", *SETTINGS, *limit, "--set", f"vocab_size={vocab_size}",
            "--seed", seed, "--corpus", folder, "--name", name, cwd=home,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    return home


def eval_json(home, *args):
    result = ptblm("eval", *args, "--json", cwd=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_ensemble_of_two_beats_both_members(runs):
    ensemble = eval_json(runs, "runs/a", "runs/b")
    alone = [eval_json(runs, f"runs/{name}")["perplexity"] for name in ("a", "b")]
    members = [member["perplexity"] for member in ensemble["members"]]
    assert members == pytest.approx(alone, rel=1e-6)  # each member as `ptblm eval` scores it
    # Below the members' geometric mean, always (Jensen). Below both members takes members of
    # equal quality that err differently: the two PTB small runs of the README show it.
    assert math.log(ensemble["perplexity"]) < sum(math.log(ppl) for ppl in alone) / 2
    assert ensemble["tokens"] == eval_json(runs, "runs/a")["tokens"]
    shown = ptblm("eval", "runs/a", "runs/b", cwd=runs).stdout
    assert f"ensemble of 2 models: {ensemble['perplexity']:.3f}" in shown
    assert f"{members[1]:.3f}  runs/b/best.pt" in shown


def test_an_ensemble_of_another_vocabulary_is_refused(runs):
    result = ptblm("eval", "runs/a", "runs/other", cwd=runs)
    assert_clean_failure(result, 1, "different vocabularies")


def test_text_with_unknown_words(runs):
    (runs / "mine.txt").write_text("w1 w2 zebra w3\nw4 okapi\n")
    total = eval_json(runs, "runs/a", "--text", "mine.txt")
    assert (total["unknown_words"], total["words"], total["tokens"]) == (2, 6, 7)
    result = ptblm("eval", "runs/a", "--text", "mine.txt", "--per-line", cwd=runs)
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
def test_bad_text_files_are_refused(runs, content, code, message):
    (runs / "bad.txt").write_bytes(content)
    assert_clean_failure(ptblm("eval", "runs/a", "--text", "bad.txt", cwd=runs), code, message)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-line"], "go with --text"),
        (["--text", "x.txt", "--split", "valid"], "drop --split"),
        (["--split", "dev"], "--split dev: use test, valid or train"),
    ],
)
def test_eval_option_misuse_exits_2(runs, args, message):
    assert_clean_failure(ptblm("eval", "runs/a", *args, cwd=runs), 2, message)


def test_generate_is_reproducible_and_prints_vocabulary_words(runs):
    args = ["generate", "runs/a", "--prompt", "w1 aardvark w2", "--words", "60", "--seed", "5"]
    first, again = ptblm(*args, cwd=runs), ptblm(*args, cwd=runs)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    assert first.stdout != ptblm(*args[:-1], "6", cwd=runs).stdout
    assert "'aardvark' is not in the vocabulary" in first.stderr
    vocabulary = set((runs / "corpus" / "ptb.train.txt").read_text().split())
    printed = first.stdout.split()
    assert printed[:3] == ["w1", "<unk>", "w2"]  # the prompt as the model read it
    assert set(printed) <= vocabulary and "<eos>" not in printed
    assert len(printed) + first.stdout.count("\n") - 1 == 3 + 60  # each <eos> a line break


@pytest.mark.parametrize(
    "args, message",
    [
        (["--temperature", "0"], "--temperature 0.0: it must be > 0"),
        (["--top-k", "-1"], "--top-k -1: it must be >= 0"),
    ],
)
def test_generate_refuses_bad_sampling_options(runs, args, message):
    assert_clean_failure(ptblm("generate", "runs/a", *args, cwd=runs), 2, message)


def test_json_for_scripts_is_strict():
    """A diverged model's perplexity is inf: the JSON says null, which every parser reads."""
    from ptblm.cli_models import _json

    text = _json({"perplexity": math.inf, "members": [{"perplexity": math.nan}], "tokens": 3})
    assert json.loads(text) == {"perplexity": None, "members": [{"perplexity": None}], "tokens": 3}
