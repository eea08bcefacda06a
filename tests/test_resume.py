"""Reliability of a run: kill -9 and resume, SIGINT / SIGTERM, edited or foreign run directories,
and which checkpoint a resume continues from (resume.py).

Every run here is the real CLI in a subprocess, on a synthetic corpus, with dropout on so that
the random generators matter for the bitwise comparisons.
"""

import json
import os
import random
import signal

import pytest
import torch
from helpers import (
    HeldRun,
    assert_clean_failure,
    make_checkpoint,
    make_corpus,
    model_from_file,
    plain_perplexity,
    ptblm,
    split_ids,
)

from ptblm.checkpoint import save_checkpoint
from ptblm.config import config_to_yaml, load_config
from ptblm.errors import CheckpointError
from ptblm.resume import load_resumable, resumable_checkpoint

SETTINGS = [
    "--set", "vocab_size=40", "--set", "hidden_size=16", "--set", "num_layers=2",
    "--set", "keep_prob=0.5", "--set", "max_epoch=1", "--set", "max_max_epoch=3",
    "--checkpoint-every", "7",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), sentences=1500)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus):
    """The uninterrupted run every interrupted one must end equal to."""
    runs = tmp_path_factory.mktemp("runs")
    result = ptblm(
        "train",
        "-c",
        "test",
        *SETTINGS,
        "--corpus",
        corpus,
        "--runs-dir",
        runs,
        "--name",
        "straight",
    )
    assert result.returncode == 0, result.stderr
    return runs / "straight"


def assert_same_run(run, reference):
    ours = torch.load(run / "last.pt", weights_only=True)
    theirs = torch.load(reference / "last.pt", weights_only=True)
    assert ours["global_step"] == theirs["global_step"]
    assert ours["model"].keys() == theirs["model"].keys()
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), f"{name} differs"  # bitwise
    metrics = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    for key in (
        "train_ppl",
        "valid_ppl",
        "test_ppl",
        "best_valid_ppl",
        "best_test_ppl",
        "global_step",
    ):
        assert metrics[key] == expected[key], key
    for ours_epoch, their_epoch in zip(metrics["history"], expected["history"], strict=True):
        assert ours_epoch["train_ppl"] == their_epoch["train_ppl"]
        assert ours_epoch["valid_ppl"] == their_epoch["valid_ppl"]


@pytest.mark.parametrize(
    "point",
    [
        "step:10",  # mid epoch 1, three windows after the last.pt of step 7
        "before:last.pt:2",  # just before step 14's last.pt is written
        "validate:1",  # epoch 1 trained, its validation under way
        "after:best.pt:1",  # between epoch 1's best.pt and its last.pt
        "validate:2",  # in epoch 2: resumed from a last.pt further on than best.pt
    ],
)
def test_kill_9_then_resume_ends_bitwise_equal(tmp_path, corpus, reference, point):
    run = HeldRun(corpus, tmp_path, "killed", point, settings=SETTINGS)
    run.wait_held()
    run.send(signal.SIGKILL)
    run.finish()
    assert not torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["finished"]
    result = ptblm("train", "--resume", tmp_path / "killed")
    assert result.returncode == 0, result.stderr
    assert "Resuming" in result.stdout
    assert not list((tmp_path / "killed").glob(".*.tmp"))  # no temp file left
    assert_same_run(tmp_path / "killed", reference)
    # TensorBoard shows each step once: what the killed process logged after last.pt is purged.
    # (At the validate points only has it logged past its last.pt; the others check the rest.)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "killed"))
    events.Reload()
    steps = [event.step for event in events.Scalars("train/loss")]
    assert steps == sorted(set(steps))
    reference_events = EventAccumulator(str(reference))
    reference_events.Reload()
    assert steps == [event.step for event in reference_events.Scalars("train/loss")]


@pytest.mark.parametrize(
    "signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_a_signal_saves_last_pt_and_says_how_to_resume(tmp_path, corpus, reference, signum, code):
    run = HeldRun(corpus, tmp_path, "stopped", "step:10", settings=SETTINGS)
    run.wait_held()
    run.send(signum)  # arrives while window 11 is about to run
    run.release()
    returncode, _, stderr = run.finish()
    assert returncode == code, stderr
    assert "Traceback" not in stderr
    assert "stopping after this window" in stderr
    assert f"ptblm train --resume {tmp_path / 'stopped'}" in stderr
    checkpoint = torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)
    assert not checkpoint["finished"] and checkpoint["global_step"] == 11
    result = ptblm("train", "--resume", tmp_path / "stopped")
    assert result.returncode == 0, result.stderr
    assert_same_run(tmp_path / "stopped", reference)


def test_resume_of_a_finished_run_changes_nothing(tmp_path, reference):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = ptblm("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "has finished already" in result.stdout
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before


def test_a_finished_run_whose_last_pt_was_lost_gets_it_back_on_resume(tmp_path, reference):
    """Its final last.pt not written (a full disk: test_cli_train.py) and the test not run:
    resumed from best.pt, the run writes last.pt before testing, so last.pt holds the weights
    test_ppl was measured on, as in every finished run."""
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_test_ppl"] == metrics["test_ppl"]  # best.pt: the final weights
    for name in ("last.pt", "metrics.json", "summary.json"):
        (run / name).unlink()
    result = ptblm("train", "--resume", run, "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "metrics.json").read_text())["test_ppl"] == metrics["test_ppl"]
    scored = ptblm("eval", run / "last.pt", "--json")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["perplexity"] == metrics["test_ppl"]


def test_another_tools_last_pt_is_not_taken_for_a_run(tmp_path):
    """A run without config.yaml may be resumed (it is written anew), but only from a ptblm
    checkpoint: other tools name theirs last.pt and best.pt too."""
    torch.save({"epoch": 3, "model": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="is not a ptblm run directory"):
        load_resumable(tmp_path)


def test_resume_refuses_an_edited_config(tmp_path, reference):
    import shutil

    run = tmp_path / "edited"
    shutil.copytree(reference, run)
    text = (run / "config.yaml").read_text().replace("hidden_size: 16", "hidden_size: 32")
    (run / "config.yaml").write_text(text)
    result = ptblm("train", "--resume", run)
    assert_clean_failure(
        result, 1, "does not match", "hidden_size: 32 in config.yaml, 16 in last.pt"
    )
    (run / "config.yaml").write_text("hidden_size: [")
    assert_clean_failure(ptblm("train", "--resume", run), 1, "no longer loads")


def test_a_config_yaml_that_no_longer_loads_is_written_anew_once_moved_aside(tmp_path, reference):
    """A damaged config.yaml left the run unresumable, with no way forward: the message says to
    move it aside, and the resume that follows writes it again from the checkpoint's config."""
    import shlex
    import shutil

    run = tmp_path / "damaged"
    shutil.copytree(reference, run)
    original = (run / "config.yaml").read_text().replace(str(reference), str(run))  # the copy
    (run / "config.yaml").write_bytes(bytes(range(128, 192)))  # no UTF-8, so no YAML
    result = ptblm("train", "--resume", run)
    assert_clean_failure(result, 1, "no longer loads", "move it aside")
    move = result.stderr[result.stderr.index("(mv ") + 1 : result.stderr.index(") and resume")]
    assert shlex.split(move) == ["mv", str(run / "config.yaml"), f"{run / 'config.yaml'}.damaged"]
    (run / "config.yaml").rename(run / "config.yaml.damaged")
    result = ptblm("train", "--resume", run)
    assert result.returncode == 0, result.stderr
    assert "config.yaml was missing: written anew from last.pt" in result.stdout + result.stderr
    rewritten = (run / "config.yaml").read_text().splitlines()
    # All but the command that wrote it, "Train again with" and its --corpus included.
    assert rewritten[2:] == original.splitlines()[2:] and "--resume" in rewritten[1]
    assert load_config(str(run / "config.yaml")) == load_config(str(reference / "config.yaml"))


@pytest.mark.parametrize(
    "option", [["--set", "learning_rate=0.1"], ["--seed", "-1"], ["--precision", "fp8"]]
)
def test_resume_refuses_options_that_would_change_the_run(reference, option):
    """An out-of-range --seed or --precision was refused for its range, not for being there."""
    result = ptblm("train", "--resume", reference, *option)
    assert_clean_failure(result, 2, "--resume continues a run with its own config")


def test_resume_and_eval_refuse_another_vocabulary(tmp_path, reference):
    other = make_corpus(tmp_path / "other", vocab_size=40, seed=1)
    (other / "ptb.train.txt").write_text((other / "ptb.train.txt").read_text() + " extra\n")
    result = ptblm("train", "--resume", reference, "--corpus", other)
    assert_clean_failure(result, 1, "another vocabulary")
    result = ptblm("eval", reference, "--corpus", other)
    assert_clean_failure(result, 1, "another vocabulary")


def test_resume_refuses_other_text_of_the_same_vocabulary_and_takes_a_moved_copy(
    tmp_path, reference, corpus
):
    """Other valid and test text, every word of it known: the resumed run validated, chose
    best.pt and tested on two different sets without a word. A copy of the corpus elsewhere (a
    moved folder) is the same text, and is taken."""
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"):
        (moved / name).write_bytes((corpus / name).read_bytes())
    result = ptblm("train", "--resume", reference, "--corpus", moved)
    assert result.returncode == 0, result.stderr
    assert "has finished already" in result.stdout
    valid = (moved / "ptb.valid.txt").read_text().splitlines()
    (moved / "ptb.valid.txt").write_text("\n".join(reversed(valid)) + "\n")  # the same words
    result = ptblm("train", "--resume", reference, "--corpus", moved)
    assert_clean_failure(
        result, 1, f"the valid text in {moved} is not what {reference / 'last.pt'} was trained "
        "with: resume it with the corpus it started with (--corpus DIR or --data-dir DIR)."
    )  # fmt: skip


def test_eval_of_a_garbage_checkpoint_fails_cleanly(tmp_path, corpus):
    (tmp_path / "best.pt").write_bytes(random.Random(0).randbytes(1000))
    result = ptblm("eval", tmp_path / "best.pt", "--corpus", corpus)
    assert_clean_failure(result, 1, "not a readable ptblm checkpoint")


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, corpus):
    # lr 1e30: the first window's update is finite but huge, the second window diverges; with a
    # checkpoint every window, last.pt holds the first window's weights.
    result = ptblm(
        "train", "-c", "test", *SETTINGS, "--set", "learning_rate=1e30",
        "--checkpoint-every", "1",
        "--corpus", corpus, "--runs-dir", tmp_path, "--name", "diverged",
    )  # fmt: skip
    assert_clean_failure(
        result, 1, "diverged at step", "learning rate 1e+30", "Lower learning_rate"
    )
    diverged_at = int(result.stderr.split("diverged at step ")[1].split()[0])
    checkpoint = torch.load(tmp_path / "diverged" / "last.pt", weights_only=True)
    assert checkpoint["global_step"] == diverged_at - 1 >= 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())


def test_a_second_ctrl_c_exits_at_once_without_corrupting_anything(tmp_path, corpus, reference):
    # The first Ctrl-C arrives while window 11 is about to run; the second while the graceful
    # stop is about to write last.pt: it must leave at once, without that save.
    run = HeldRun(corpus, tmp_path, "twice", "step:10", "before:last.pt:2", settings=SETTINGS)
    run.wait_held(0)
    run.send(signal.SIGINT)
    run.release(0)
    run.wait_held(1)
    run.send(signal.SIGINT)
    returncode, _, stderr = run.finish()
    assert returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "Ctrl-C again to quit at once" in stderr  # the first was heard
    assert "received: stopped" not in stderr  # the graceful path did not run to its end
    # ...yet the user is told how to go on.
    assert f"quit at once. Continue with: ptblm train --resume {tmp_path / 'twice'}" in stderr
    last = torch.load(tmp_path / "twice" / "last.pt", weights_only=True)  # intact
    assert last["global_step"] == 7  # the save of step 11 never happened
    result = ptblm("train", "--resume", tmp_path / "twice")
    assert result.returncode == 0, result.stderr
    assert_same_run(tmp_path / "twice", reference)


def test_a_second_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(
    tmp_path, corpus
):
    """It said to --resume a run that had no checkpoint, which --resume then refused."""
    run = HeldRun(corpus, tmp_path, "early", "step:2", "before:last.pt:1", settings=SETTINGS)
    run.wait_held(0)
    run.send(signal.SIGINT)
    run.release(0)
    run.wait_held(1)  # the graceful stop is about to write the run's first last.pt
    run.send(signal.SIGINT)
    returncode, _, stderr = run.finish()
    assert returncode == 130 and "Traceback" not in stderr
    assert (
        f"The run had saved no checkpoint: start it again (first rm -r {tmp_path / 'early'})"
        in stderr
    )
    assert "Continue with" not in stderr
    assert resumable_checkpoint(tmp_path / "early") is None


def windows_per_epoch(reference) -> int:
    return json.loads((reference / "metrics.json").read_text())["history"][0]["windows"]


def test_sigterm_during_validation_keeps_the_epochs_training_and_later_ones_are_ignored(
    tmp_path, corpus, reference
):
    """A SIGTERM while epoch 1 validates: last.pt keeps the epoch's training and the validation
    runs again on resume. A scheduler that sends more SIGTERMs does not cut that save short (a
    second Ctrl-C would)."""
    run = HeldRun(corpus, tmp_path, "validating", "validate:1", settings=SETTINGS)
    run.wait_held()
    run.send(signal.SIGTERM)
    run.wait_for_stderr("SIGTERM: stopping after this window")  # the first one is handled
    run.send(signal.SIGTERM)  # ...and this one arrives while the run is still held
    run.release()
    returncode, _, stderr = run.finish()
    assert returncode == 143, stderr
    assert "Traceback" not in stderr
    assert stderr.count("stopping after this window") == 1  # the further one was ignored
    windows = windows_per_epoch(reference)
    assert f"SIGTERM received: stopped at step {windows} (epoch 1)" in stderr
    assert f"Continue with: ptblm train --resume {tmp_path / 'validating'}" in stderr
    last = torch.load(tmp_path / "validating" / "last.pt", weights_only=True)
    assert (last["epoch"], last["window"], last["global_step"]) == (0, windows, windows)
    assert last["history"] == [] and not last["finished"]  # the cut validation is not recorded
    result = ptblm("train", "--resume", tmp_path / "validating")
    assert result.returncode == 0, result.stderr
    assert_same_run(tmp_path / "validating", reference)


def test_sigterm_during_the_final_test_leaves_a_run_trained_with_its_test_pending(tmp_path, corpus):
    """Stopped while it tests: `ptblm runs` says trained, test pending; a second --resume while
    one is testing is refused by the lock; the resume only tests, and its numbers are the saved
    models' (computed here)."""
    settings = [*SETTINGS, "--max-steps", "20"]  # trained in 20 windows, then tested
    run = HeldRun(corpus, tmp_path, "testing", "test:1", settings=settings)
    run.wait_held()
    run.send(signal.SIGTERM)
    run.release()
    returncode, _, stderr = run.finish()
    assert returncode == 143, stderr
    assert "Traceback" not in stderr
    assert "SIGTERM received: stopped in the final test (training had ended at step 20)" in stderr
    assert f"Continue with: ptblm train --resume {tmp_path / 'testing'}" in stderr
    assert not (tmp_path / "testing" / "metrics.json").exists()
    listed = ptblm("runs", "--runs-dir", tmp_path)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("testing ")]
    assert "trained, test pending, resumable" in row
    resume = ["train", "--resume", tmp_path / "testing"]
    first = HeldRun(corpus, tmp_path, "first", "test:1", args=resume)
    first.wait_held()  # the first resume holds the lock, testing
    second = ptblm("train", "--resume", tmp_path / "testing")
    assert_clean_failure(second, 1, f"another ptblm process is training {tmp_path / 'testing'}")
    first.release()
    returncode, stdout, stderr = first.finish()
    assert returncode == 0, stderr
    assert "Resuming" not in stdout and "Testing" in stdout  # nothing left to train
    metrics = json.loads((tmp_path / "testing" / "metrics.json").read_text())
    assert metrics["global_step"] == 20 and metrics["status"] == "finished"
    for key, checkpoint in (("test_ppl", "last.pt"), ("best_test_ppl", "best.pt")):
        path = tmp_path / "testing" / checkpoint
        expected = plain_perplexity(model_from_file(path), split_ids(corpus, "test", path))
        assert metrics[key] == pytest.approx(expected, rel=1e-5), key


# --- which checkpoint a resume continues from (resume.py) ---------------------------------


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
    last.write_bytes(b"damaged too")  # both: moving either aside would not help
    with pytest.raises(CheckpointError, match="pt cannot be read either: start the run") as refused:
        load_resumable(tmp_path)
    assert "mv " not in str(refused.value)


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
