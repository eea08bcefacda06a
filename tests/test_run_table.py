"""`ptblm runs` on real runs in every state: finished, stopped, training now, diverged."""

import json
import shutil
import signal
import statistics
from pathlib import Path

import pytest
from helpers import HeldRun, assert_clean_failure, make_corpus, ptblm

from ptblm.errors import DataError
from ptblm.run_table import read_runs, render, seed_groups

SETTINGS = [
    "--set", "vocab_size=40", "--set", "hidden_size=16", "--set", "max_max_epoch=2", "--quiet",
]  # fmt: skip


def train(corpus, runs, name, *args):
    return ptblm("train", "-c", "test", *SETTINGS, *args, "--corpus", corpus,
                 "--runs-dir", runs, "--name", name)  # fmt: skip


def listing(runs, env=None):
    result = ptblm("runs", "--runs-dir", runs, "--json", env=env)
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    return {row["name"]: row for row in table["runs"]}, table["seed_groups"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs that differ only in their seed, one stopped by Ctrl-C, one diverged,
    one killed before its first checkpoint, and one that a process is training right now."""
    runs = tmp_path_factory.mktemp("runs")
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    for seed in (1, 2):
        assert train(corpus, runs, f"done-{seed}", "--seed", seed).returncode == 0
    assert train(corpus, runs, "cut", "--max-steps", 3).returncode == 0
    stopped = HeldRun(corpus, runs, "stopped", "step:3", settings=SETTINGS)
    stopped.wait_held()
    stopped.send(signal.SIGINT)
    stopped.release()
    assert stopped.finish()[0] == 130
    diverged = train(
        corpus, runs, "diverged", "--set", "learning_rate=1e30", "--checkpoint-every", 1
    )
    assert diverged.returncode == 1
    early = HeldRun(corpus, runs, "early", "step:0", settings=SETTINGS)
    early.wait_held()
    early.send(signal.SIGKILL)
    early.finish()
    training = HeldRun(
        corpus, runs, "training", "after:last.pt:1", settings=[*SETTINGS, "--checkpoint-every", "3"]
    )
    training.wait_held()
    yield runs, diverged.stderr
    training.send(signal.SIGKILL)
    training.finish()


def test_every_state_is_listed(runs):
    runs, diverged_stderr = runs
    rows, _ = listing(runs)
    assert set(rows) == {"done-1", "done-2", "cut", "stopped", "diverged", "early", "training"}
    for seed in (1, 2):
        row = rows[f"done-{seed}"]
        metrics = json.loads((runs / f"done-{seed}" / "metrics.json").read_text())
        assert (row["status"], row["seed"], row["config_name"]) == ("finished", seed, "test")
        for key in ("test_ppl", "best_test_ppl", "best_valid_ppl", "train_wps"):
            assert row[key] == metrics[key]
        assert row["epochs_trained"] == 2
    assert rows["stopped"]["status"] == "stopped" and rows["stopped"]["resumable"]
    stopped = rows["stopped"]
    assert (stopped["epochs_completed"], stopped["window"]) == (0, 4)  # 4 windows trained
    step = int(diverged_stderr.split("diverged at step ")[1].split()[0])
    assert rows["diverged"]["status"] == "diverged"
    assert rows["diverged"]["diverged_at_step"] == step
    assert rows["early"]["status"] == "stopped" and not rows["early"]["resumable"]
    assert rows["early"]["seed"] == 0 and rows["early"]["config_name"] == "test"  # config.yaml
    assert rows["training"]["status"] == "training"
    assert rows["training"]["global_step"] == 3  # as of its last checkpoint


def test_the_table_a_person_reads(runs):
    runs, _ = runs
    result = ptblm("runs", "--runs-dir", runs)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines()}
    assert "stopped at epoch 1 window 4, resumable" in lines["stopped"]
    assert "stopped before its first checkpoint: start it again" in lines["early"]
    assert "training" in lines["training"] and "diverged at step" in lines["diverged"]
    assert " finished " in lines["done-1"]
    assert "finished, cut short at epoch" in lines["cut"]


def test_runs_that_differ_only_in_their_seed_are_summarised(runs):
    runs, _ = runs
    _, groups = listing(runs)
    tests = [
        json.loads((runs / f"done-{s}" / "metrics.json").read_text())["test_ppl"] for s in (1, 2)
    ]
    [group] = groups
    assert group["seeds"] == [1, 2]
    assert group["test_ppl"]["mean"] == pytest.approx(statistics.mean(tests))
    assert group["test_ppl"]["std"] == pytest.approx(statistics.stdev(tests))
    text = ptblm("runs", "--runs-dir", runs).stdout
    changed = "hidden_size 16, max_max_epoch 2, vocab_size 40"  # the --set of SETTINGS
    assert f"test ({changed}) over 2 runs (seeds 1, 2): " in text
    assert f"test {statistics.mean(tests):.2f} +- {statistics.stdev(tests):.2f}" in text


def test_runs_on_another_corpus_are_not_averaged_with_these(runs, tmp_path):
    """The same config and seeds 3 and 4 on another text: their test sets differ, so their
    perplexities are no samples of the same thing."""
    runs, _ = runs
    corpus = make_corpus(tmp_path / "corpus", seed=7)
    for seed in (1, 2):
        shutil.copytree(runs / f"done-{seed}", tmp_path / f"done-{seed}")
    for seed in (3, 4):
        result = train(corpus, tmp_path, f"other-{seed}", "--seed", seed)
        assert result.returncode == 0, result.stderr
    _, groups = listing(tmp_path)
    assert [group["runs"] for group in groups] == [["done-1", "done-2"], ["other-3", "other-4"]]


def test_runs_validated_on_a_prefix_are_marked_and_not_averaged(runs, tmp_path):
    """--eval-tokens runs of two seeds do not join (or form) a seed group beside the table."""
    runs, _ = runs
    corpus = make_corpus(tmp_path / "corpus")
    for seed in (1, 2):
        shutil.copytree(runs / f"done-{seed}", tmp_path / f"done-{seed}")
        result = train(corpus, tmp_path, f"quick-{seed}", "--seed", seed, "--eval-tokens", 200)
        assert result.returncode == 0, result.stderr
    rows, groups = listing(tmp_path)
    assert rows["quick-1"]["eval_tokens"] == 200
    assert [group["runs"] for group in groups] == [["done-1", "done-2"]]
    lines = {
        line.split()[0]: line for line in ptblm("runs", "--runs-dir", tmp_path).stdout.splitlines()
    }
    assert "finished, tested on 200 tokens" in lines["quick-2"]
    assert "tested on" not in lines["done-2"]


def test_listing_never_loads_a_checkpoint(runs, tmp_path):
    """Dozens of large runs list at once: with torch unimportable and 300 MB checkpoints (sparse
    files) that are not torch files at all, the listing is the same."""
    runs, _ = runs
    many = tmp_path / "many"
    for copy in range(30):
        shutil.copytree(runs / "done-1", many / f"large-{copy:02}")
        for name in ("best.pt", "last.pt"):
            with open(many / f"large-{copy:02}" / name, "wb") as checkpoint:
                checkpoint.truncate(300 * 2**20)
    (tmp_path / "torch.py").write_text("raise ImportError('torch was imported')\n")
    rows, groups = listing(many, env={"PYTHONPATH": str(tmp_path)})
    assert len(rows) == 30 and all(row["status"] == "finished" for row in rows.values())
    assert groups == []  # thirty runs of one seed: nothing to average over seeds


def test_a_run_of_an_older_ptblm_is_listed_from_its_metrics(runs, tmp_path):
    runs, _ = runs
    shutil.copytree(runs / "done-1", tmp_path / "old")
    (tmp_path / "old" / "summary.json").unlink()
    rows, _ = listing(tmp_path)
    metrics = json.loads((tmp_path / "old" / "metrics.json").read_text())
    assert rows["old"]["status"] == "finished" and rows["old"]["test_ppl"] == metrics["test_ppl"]


def test_no_runs_directory(tmp_path):
    result = ptblm("runs", "--runs-dir", tmp_path / "nothing")
    assert_clean_failure(result, 1, "no such runs directory", "--runs-dir")
    (tmp_path / "empty").mkdir()
    result = ptblm("runs", "--runs-dir", tmp_path / "empty")
    assert result.returncode == 0 and "No runs under" in result.stdout


@pytest.mark.parametrize(
    "summary",
    [
        "{not json",
        '{"x": 1}',
        '{"status": "finished", "test_ppl": "12", "epoch": null, "config": [1], "seed": []}',
        '{"status": "finished", "test_ppl": Infinity, "best_valid_ppl": NaN, "published": 3}',
        '{"status": "stopped", "epoch": "one", "window": 2.5}',
        "[1, 2]",
    ],
)
def test_an_odd_summary_is_listed_not_a_traceback(tmp_path, summary):
    """Edited, truncated or foreign summary.json files: the run is listed, the odd values as -."""
    for name in ("a", "b"):  # two alike, so that the seed summary sees them too
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed: 1\n")
        (tmp_path / name / "summary.json").write_text(summary)
        (tmp_path / name / "last.pt").write_bytes(b"")
    result = ptblm("runs", "--runs-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].startswith("a ")
    as_json = ptblm("runs", "--runs-dir", tmp_path, "--json")
    json.loads(as_json.stdout, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


def test_no_runs_directory_is_an_empty_table_for_scripts_and_a_message_for_people(tmp_path):
    result = ptblm("runs", "--runs-dir", tmp_path / "none", "--json")
    assert result.returncode == 0 and json.loads(result.stdout) == {"runs": [], "seed_groups": []}
    assert_clean_failure(
        ptblm("runs", "--runs-dir", tmp_path / "none"), 1, "no such runs directory"
    )


def test_a_seed_group_stands_beside_the_published_row(tmp_path):
    """Two finished small runs (summary.json written by hand), seeds 1 and 2."""
    published = {"config": "small", "train": 40.8, "valid": 119.98, "test": 115.91}
    for seed, test in ((1, 114.0), (2, 116.0)):
        run = tmp_path / f"small-{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(f"seed: {seed}\n")
        summary = {
            "status": "finished",
            "config_name": "small",
            "config": {"seed": seed, "hidden_size": 200, "precision": "fp32"},
            "variant": {"tie_weights": True},
            "published": published,
            "epochs_trained": 13.0,
            "best_valid_ppl": test + 4,
            "test_ppl": test,
            "best_test_ppl": test + 0.5,
        }
        (run / "summary.json").write_text(json.dumps(summary))
    rows = read_runs(tmp_path)
    text = render(rows, seed_groups(rows), tmp_path)
    assert text.splitlines()[-1] == (
        "small over 2 runs (seeds 1, 2): best valid 119.00 +- 1.41, test 115.00 +- 1.41, "
        "best.pt test 115.50 +- 1.41; published small: valid 119.98, test 115.91 "
        "(these runs' model adds tie_weights: True)"
    )


@pytest.mark.parametrize(
    "stall, said",
    [
        ({"warned_at_step": 150, "ongoing": True}, "finished; stalled at step 150"),
        ({"warned_at_step": 150, "ongoing": False}, "finished; stalled at step 150, recovered"),
        ({"warned_at_step": "150", "ongoing": False}, "finished"),  # an edited file
        (7, "finished"),
        (None, "finished"),
    ],
)
def test_a_stalled_start_is_shown_after_the_status(tmp_path, stall, said):
    run = tmp_path / "large-1"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 1\n")
    (run / "summary.json").write_text(json.dumps({"status": "finished", "stall": stall}))
    row = render(read_runs(tmp_path), [], tmp_path).splitlines()[1]
    assert said in row and ("stalled" in row) == ("stalled" in said)


def test_a_run_directory_that_cannot_be_read_is_listed_as_such(tmp_path, monkeypatch):
    """Another user's run, mode 0700 (simulated: root reads it all the same)."""
    for name in ("mine", "theirs"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text("seed: 1\n")
    (tmp_path / "mine" / "summary.json").write_text('{"status": "finished"}')
    is_file = Path.is_file

    def denied(path):
        if path.parent.name == "theirs":
            raise PermissionError(13, "Permission denied", str(path))
        return is_file(path)

    monkeypatch.setattr(Path, "is_file", denied)
    rows = read_runs(tmp_path)
    assert [(row["name"], row["status"]) for row in rows] == [
        ("mine", "finished"), ("theirs", "unreadable"),
    ]  # fmt: skip
    lines = render(rows, seed_groups(rows), tmp_path).splitlines()
    assert "unreadable: Permission denied" in lines[2] and lines[2].startswith("theirs")


def test_a_runs_directory_that_cannot_be_listed_is_one_line(tmp_path, monkeypatch):
    """Another user's 0700 runs directory: nothing in it can be looked at, not even whether it
    holds a config.yaml (simulated: root reads it all the same)."""
    stat = Path.stat

    def denied(path, **options):
        if path.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return stat(path, **options)

    monkeypatch.setattr(Path, "stat", denied)
    monkeypatch.setattr(Path, "iterdir", lambda path: denied(path / "x"))
    with pytest.raises(DataError) as raised:
        read_runs(tmp_path)
    assert str(raised.value) == (
        f"{tmp_path}: cannot be listed (Permission denied). Point --runs-dir at a directory you "
        f"can read."
    )


def test_a_runs_directory_that_is_a_run_or_a_file_says_what_to_give(tmp_path):
    run = tmp_path / "runs" / "small-1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 1\n")
    assert_clean_failure(
        ptblm("runs", "--runs-dir", run), 1,
        f"{run} is a run directory, not a directory of runs: use --runs-dir {tmp_path / 'runs'}",
    )  # fmt: skip
    (tmp_path / "notes.txt").write_text("x")
    for json_flag in ([], ["--json"]):  # --json gave an empty table, exit 0
        assert_clean_failure(
            ptblm("runs", "--runs-dir", tmp_path / "notes.txt", *json_flag), 1,
            "notes.txt is a file: give the",
        )  # fmt: skip
