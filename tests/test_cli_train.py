"""`ptblm train` (cli_train.py) against the faults a careful user or an attacker meets, through
the real command: full and read-only disks (a real tmpfs where the tests run as root), run
directories from someone else (a .lock that is a link or a FIFO), runs cut off between their
last writes, and run names that leave --runs-dir."""

import json
import os
import shutil

import pytest
from helpers import HeldRun, assert_clean_failure, make_corpus, ptblm

TINY = ["-c", "test", "--set", "vocab_size=40", "--set", "hidden_size=16", "--quiet"]
# A checkpoint of about 1.3 MB: one fits on a 2 MB disk, two do not.
SMALL = ["-c", "test", "--set", "vocab_size=2000", "--set", "hidden_size=64", "--quiet"]


@pytest.fixture(scope="module")
def tiny_corpus_dir(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def train(corpus, runs, name, *args, settings=TINY):
    return ptblm("train", *settings, *args, "--corpus", corpus, "--runs-dir", runs, "--name", name)


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_disk_that_fills_during_a_checkpoint_stops_in_one_line_and_resumes(tmp_path, small_disk):
    corpus = make_corpus(tmp_path / "corpus", vocab_size=2000, sentences=3000)
    runs = small_disk(2)
    result = train(corpus, runs, "r", "--max-steps", 3, settings=SMALL)
    assert_clean_failure(result, 1, "could not write", "last.pt", "MB free", "Free some space")
    run = runs / "r"
    assert one_line(result).endswith(f"Then continue with: ptblm train --resume {run}")
    assert (run / "best.pt").is_file() and not (run / "last.pt").exists()
    assert not list(run.glob(".*.tmp"))  # the cut-off temp file is gone
    listed = ptblm("runs", "--runs-dir", runs, "--json")
    assert json.loads(listed.stdout)["runs"][0]["resumable"]  # from best.pt: nothing is lost
    events = sorted(run.glob("events.out.tfevents.*"))
    refused = ptblm("train", "--resume", run, "--quiet")  # the disk still full
    assert_clean_failure(refused, 1, "could not write", "last.pt")
    assert sorted(run.glob("events.out.tfevents.*")) == events  # no event file per attempt
    small_disk.remount(runs, "size=20m")  # space freed
    result = ptblm("train", "--resume", run, "--quiet")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 3 and metrics["status"] == "finished"
    # last.pt holds the final weights, as in any finished run: eval reproduces test_ppl
    scored = ptblm("eval", run / "last.pt", "--corpus", corpus, "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["perplexity"] == metrics["test_ppl"]


def test_a_disk_too_full_for_the_first_checkpoint_says_to_start_again(tmp_path, small_disk):
    """Nothing saved: "then resume" led to "holds no checkpoint"."""
    corpus = make_corpus(tmp_path / "corpus", vocab_size=2000, sentences=3000)
    runs = small_disk(0.3)
    result = train(corpus, runs, "r", "--max-steps", 3, settings=SMALL)
    assert_clean_failure(result, 1, "could not write", "best.pt", "MB free")
    assert result.stderr.strip().endswith(
        f"The run has no checkpoint yet: start it again (rm -r {runs / 'r'} first)."
    )


def test_resuming_a_run_on_a_read_only_disk_is_one_line(tiny_corpus_dir, small_disk):
    """Unless the run is finished and tested: then it only shows its results, as on any disk
    (it said to copy the run elsewhere)."""
    runs = small_disk(20)
    for name in ("done", "r"):
        assert train(tiny_corpus_dir, runs, name, "--max-steps", 3).returncode == 0
    (runs / "r" / "metrics.json").unlink()  # its test still to run: a resume must write
    small_disk.remount(runs, "ro")
    result = ptblm("train", "--resume", runs / "r")
    assert_clean_failure(result, 1, "cannot lock", "Read-only file system", "writable")
    one_line(result)
    result = ptblm("train", "--resume", runs / "done")
    assert result.returncode == 0, result.stderr
    assert "has finished already" in result.stdout + result.stderr


def test_a_finished_run_cut_off_before_its_summary_gets_it_on_resume(tiny_corpus_dir, tmp_path):
    """A full disk or a kill -9 between metrics.json and summary.json: what the message promises
    (resume writes it) is what happens."""
    runs = tmp_path / "runs"
    assert train(tiny_corpus_dir, runs, "r", "--max-steps", 3).returncode == 0
    summary = json.loads((runs / "r" / "summary.json").read_text())
    (runs / "r" / "summary.json").unlink()
    header = (runs / "r" / "config.yaml").read_text().splitlines()[2]
    assert "config.yaml --max-steps 3 --corpus" in header  # "Train again with": the same run
    result = ptblm("train", "--resume", runs / "r")
    assert result.returncode == 0 and "has finished already" in result.stdout + result.stderr
    assert "Resuming" not in result.stdout
    assert json.loads((runs / "r" / "summary.json").read_text()) == summary
    listed = ptblm("runs", "--runs-dir", runs, "--json")
    assert json.loads(listed.stdout)["runs"][0]["status"] == "finished"


def test_a_run_that_never_saved_says_to_start_it_again(tiny_corpus_dir, tmp_path):
    runs = tmp_path / "runs"
    assert train(tiny_corpus_dir, runs, "done", "--max-steps", 3).returncode == 0
    early = runs / "early"
    early.mkdir()  # what a run killed before its first checkpoint leaves
    shutil.copy(runs / "done" / "config.yaml", early / "config.yaml")
    for result, code in (
        (train(tiny_corpus_dir, runs, "early"), 2),
        (ptblm("train", "--resume", early), 1),
    ):
        assert_clean_failure(result, code, "holds no checkpoint", "Start it again", "rm -r")
        # another --name is a way out of a new run's clash, not of --resume, which takes none
        assert ("choose another --name" in result.stderr) == (code == 2)
    before = {path.name: path.read_bytes() for path in (runs / "done").iterdir()}
    again = train(tiny_corpus_dir, runs, "done")  # finished: nothing to resume (it said to)
    assert_clean_failure(again, 2, "already exists, a finished run", f"ptblm eval {runs / 'done'}")
    assert {path.name: path.read_bytes() for path in (runs / "done").iterdir()} == before
    rows = {
        row["name"]: row
        for row in json.loads(ptblm("runs", "--runs-dir", runs, "--json").stdout)["runs"]
    }
    assert rows["early"]["seed"] == 0 and rows["early"]["config"]["hidden_size"] == 16
    stopped = shutil.copytree(runs / "done", runs / "stopped")
    (stopped / "metrics.json").unlink()  # trained, its test pending: resume it instead
    again = train(tiny_corpus_dir, runs, "stopped")
    assert_clean_failure(again, 2, "already exists", f"ptblm train --resume {stopped}")


def test_a_name_taken_by_a_live_run_or_by_no_run_never_says_rm_r(tiny_corpus_dir, tmp_path):
    """Two runs started in the same second had one default name: the second was told to
    `rm -r` the directory of the first, which was training (before its first checkpoint)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    live = HeldRun(tiny_corpus_dir, runs, "live", "step:0", settings=[*TINY[2:], "--max-steps", 2])
    live.wait_held()  # its directory made and locked, no checkpoint yet
    try:
        for result, code in (
            (train(tiny_corpus_dir, runs, "live"), 2),
            (ptblm("train", "--resume", runs / "live"), 1),
        ):
            assert_clean_failure(result, code, "another ptblm process is training", "wait for it")
            assert "rm -r" not in result.stderr
    finally:
        live.release()
        returncode, _, stderr = live.finish()
    assert returncode == 0, stderr
    saved = [*TINY[2:], "--max-steps", 4, "--checkpoint-every", 1]
    live = HeldRun(tiny_corpus_dir, runs, "saved", "after:last.pt:1", settings=saved)
    live.wait_held()  # training, with a checkpoint: not a run to --resume now
    try:
        result = train(tiny_corpus_dir, runs, "saved")
        assert_clean_failure(result, 2, "another ptblm process is training it now: wait for it")
        assert "--resume" not in result.stderr
    finally:
        live.release()
        returncode, _, stderr = live.finish()
    assert returncode == 0, stderr
    (runs / "thesis").mkdir()
    (runs / "thesis" / "thesis.tex").write_text("x")
    result = train(tiny_corpus_dir, runs, "thesis")
    assert_clean_failure(result, 2, "thesis exists and is not a ptblm run directory")
    assert "rm -r" not in result.stderr


def test_a_default_name_that_is_taken_gets_a_number(tiny_corpus_dir, tmp_path):
    """Runs named by ptblm (the config and the second it started) never collide: the second of
    two runs started together trains as NAME-2."""
    import time

    runs = tmp_path / "runs"
    start = time.time()
    seconds = range(600)  # however slowly the run starts on a loaded machine
    taken = {f"test-{time.strftime('%Y%m%d-%H%M%S', time.localtime(start + s))}" for s in seconds}
    for name in taken:  # whichever second the run is named in, its name is taken
        (runs / name).mkdir(parents=True)
    result = ptblm(
        "train", *TINY, "--max-steps", 2, "--corpus", tiny_corpus_dir, "--runs-dir", runs
    )
    assert result.returncode == 0, result.stderr
    (made,) = {path.name for path in runs.iterdir()} - taken
    assert made.endswith("-2") and made[:-2] in taken
    assert (runs / made / "metrics.json").is_file()
    assert all(not any((runs / name).iterdir()) for name in taken)  # none of them touched


def test_a_lock_that_is_a_link_or_a_fifo_is_never_followed_nor_waited_on(tiny_corpus_dir, tmp_path):
    runs = tmp_path / "runs"
    assert train(tiny_corpus_dir, runs, "r", "--max-steps", 3).returncode == 0
    (runs / "r" / "metrics.json").unlink()  # its test still to run: a resume takes the lock
    victim = tmp_path / "victim"
    victim.write_text("precious")
    lock = runs / "r" / ".lock"
    lock.unlink()
    lock.symlink_to(victim)
    result = ptblm("train", "--resume", runs / "r")
    assert_clean_failure(result, 1, "cannot lock", ".lock")
    assert victim.read_text() == "precious"
    lock.unlink()
    os.mkfifo(lock)
    (runs / "r" / "summary.json").unlink()
    os.mkfifo(runs / "r" / "summary.json")
    listed = ptblm("runs", "--runs-dir", runs, timeout=60)  # a FIFO would block it forever
    assert listed.returncode == 0, listed.stderr
    assert_clean_failure(ptblm("train", "--resume", runs / "r"), 1, "cannot lock")


@pytest.mark.parametrize("name", ["../../escape", "/tmp/ptblm-escape", "a/b", ".."])
def test_a_run_name_is_one_directory_name(tiny_corpus_dir, tmp_path, name):
    runs = tmp_path / "deep" / "runs"
    result = train(tiny_corpus_dir, runs, name, "--max-steps", 1)
    assert_clean_failure(result, 2, "--name", "one directory name")
    assert not runs.exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("vocab_size", [39, 41])
def test_a_corpus_of_another_vocabulary_size_gets_the_set_to_use(
    tiny_corpus_dir, tmp_path, vocab_size
):
    """Fewer words than the corpus has would index past the embedding; more would train rows
    no word uses. Either is refused before anything is written."""
    settings = ["-c", "test", "--set", f"vocab_size={vocab_size}", "--set", "hidden_size=16"]
    result = train(tiny_corpus_dir, tmp_path / "runs", "r", settings=settings)
    assert_clean_failure(result, 1, "has 40 distinct words", "--set vocab_size=40")
    one_line(result)
    assert not (tmp_path / "runs").exists()


def test_train_again_flags_name_what_config_yaml_does_not_hold():
    from pathlib import Path

    from ptblm.cli_train import again_flags
    from ptblm.download import DEFAULT_DATA_DIR

    assert again_flags(DEFAULT_DATA_DIR, None, max_steps=None, eval_tokens=None) == ""
    assert again_flags(Path("my data"), None, max_steps=3, eval_tokens=None) == (
        " --max-steps 3 --data-dir 'my data'"
    )
    # The two are refused together (exit 2): with a corpus of its own, the run names that alone
    assert again_flags(Path("elsewhere"), Path("corpus"), max_steps=None, eval_tokens=500) == (
        " --eval-tokens 500 --corpus corpus"
    )
    assert again_flags(DEFAULT_DATA_DIR, None, max_steps=None, threads=2) == " --threads 2"
