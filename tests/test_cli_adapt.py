"""`ptblm eval --cache/--dynamic/--tune`, run as a user would."""

import json
import shutil

import pytest
from helpers import assert_clean_failure, make_corpus, ptblm

SETTINGS = [
    "-c", "test", "--set", "vocab_size=40", "--set", "hidden_size=16", "--set", "num_steps=5",
    "--set", "batch_size=4", "--set", "max_max_epoch=2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("adapt")
    corpus = make_corpus(home / "corpus", vocab_size=40)
    result = ptblm("train", *SETTINGS, "--corpus", corpus, "--name", "a", cwd=home)
    assert result.returncode == 0, result.stderr
    return home


def eval_json(home, *args):
    result = ptblm("eval", "runs/a", *args, "--json", cwd=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tune_chooses_on_valid_and_reports_the_plain_number_beside(home):
    plain = eval_json(home)["perplexity"]
    result = eval_json(home, "--cache", "--dynamic", "--tune")
    assert result["plain_perplexity"] == pytest.approx(plain, rel=1e-12)
    assert len(result["tuned_on_valid"]) == 27 + 6  # every grid point, with its valid ppl
    for kind, key in (("CacheSettings", "cache"), ("DynamicSettings", "dynamic")):
        points = [p for p in result["tuned_on_valid"] if kind in p]
        assert result[key] == min(points, key=lambda point: point["valid_ppl"])[kind]
    assert result["split"] == "test"
    # The chosen settings, given by hand, score the test split as the tuned run did.
    cache, dynamic = result["cache"], result["dynamic"]
    given = eval_json(
        home, "--cache", "--cache-window", str(cache["window"]), "--cache-theta",
        str(cache["theta"]), "--cache-lambda", str(cache["lambda"]), "--dynamic",
        *(arg for name, value in dynamic.items() for arg in (f"--dynamic-{name}", str(value))),
    )  # fmt: skip
    assert given["perplexity"] == pytest.approx(result["perplexity"], rel=1e-9)


def test_text_adapts_like_the_split_it_holds(home):
    shutil.copy(home / "corpus" / "ptb.test.txt", home / "doc.txt")
    options = ["--cache", "--cache-window", "50", "--dynamic", "--dynamic-lr", "0.5"]
    split = eval_json(home, *options)
    text = eval_json(home, "--text", "doc.txt", *options)
    assert text["perplexity"] == pytest.approx(split["perplexity"], rel=1e-9)
    # evaluate() sums each window in fp32 first: the plain numbers agree to fp32 rounding
    assert text["plain_perplexity"] == pytest.approx(split["plain_perplexity"], rel=1e-6)
    assert text["cache"]["window"] == 50 and text["dynamic"]["lr"] == 0.5
    assert set(text["cache"]) == {"window", "theta", "lambda"}  # as the options name them
    for args in (["--text", "doc.txt"], []):
        shown = ptblm("eval", "runs/a", *args, *options, "--cache-lambda", "0.25", cwd=home)
        assert shown.returncode == 0, shown.stderr
        assert "the cache (window 50, theta 0.3, lambda 0.25) and dynamic evaluation (lr 0.5, " in (
            shown.stdout
        )


def test_tune_on_a_text_file_shows_its_grid_as_on_a_split(home):
    """The grid's validation perplexities were printed for a split only, not for --text."""
    shutil.copy(home / "corpus" / "ptb.test.txt", home / "tuned.txt")
    shown = ptblm("eval", "runs/a", "--text", "tuned.txt", "--cache", "--tune", cwd=home)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["valid"] * 27  # the cache's grid
    assert (
        lines[-1].startswith("tuned.txt: perplexity ") and ", with the cache (window" in lines[-1]
    )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--cache", "--cache-window", "0"], "--cache-window 0"),
        (["--cache", "--cache-lambda", "1.5"], "--cache-lambda 1.5"),
        (["--cache", "--cache-theta", "-1"], "--cache-theta -1"),
        (["--dynamic", "--dynamic-lr", "-0.1"], "--dynamic-lr -0.1"),
        (["--dynamic", "--dynamic-lr", "1e39"], "--dynamic-lr 1e+39: must be a number >= 0 and <="),
        (["--dynamic", "--dynamic-decay", "2"], "--dynamic-decay 2"),
        (["--dynamic", "--dynamic-segment", "0"], "--dynamic-segment 0"),
        (["--cache-window", "10"], "go with --cache"),
        (["--dynamic-lr", "1"], "go with --dynamic"),
        (["--tune"], "--tune chooses"),
        (["--cache", "--cache-theta", "0.2", "--tune"], "--tune chooses --cache-window"),
        (["--dynamic", "--dynamic-lr", "1", "--tune"], "drop them, or drop --tune"),
        (["runs/a", "--cache"], "one checkpoint"),
        (["--cache", "--batch-size", "4"], "one checkpoint"),
        (["--cache", "--text", "x.txt", "--per-line"], "drop the other checkpoints, --batch-size"),
        (["--cache", "--cache-window", "1000001"], "--cache-window 1000001: must be an integer"),
        (["--dynamic", "--dynamic-segment", "501"], "--dynamic-segment 501: must be an integer"),
    ],
)
def test_bad_adaptive_options_are_refused_before_anything_is_read(
    tmp_path, args, fragment, monkeypatch
):
    """In-process (the command itself, exit code and all: the test below): each is a ConfigError,
    raised before the checkpoint or any text is read, which here do not even exist."""
    from typer.testing import CliRunner

    from ptblm.cli import app
    from ptblm.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["eval", "runs/a", *args], standalone_mode=False)
    assert isinstance(result.exception, ConfigError), result.exception
    assert fragment in str(result.exception) and "\n" not in str(result.exception)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--cache", "--cache-window", "0"], "--cache-window 0"),
        (["--dynamic-lr", "1"], "go with --dynamic"),
    ],
)
def test_ptblm_eval_refuses_bad_adaptive_options_in_one_line(home, args, fragment):
    result = ptblm("eval", "runs/a", *args, cwd=home)
    assert_clean_failure(result, 2, fragment)
    assert len(result.stderr.strip().splitlines()) == 1
