"""Multi-process training under torchrun: 2 CPU processes (gloo on 127.0.0.1) against one."""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from helpers import HeldRun, assert_clean_failure, dead_url, make_corpus, ptblm

# No dropout: with it each rank draws its own masks, so the runs could not be compared.
SETTINGS = [
    "-c", "test", "--set", "vocab_size=40", "--set", "hidden_size=16", "--set", "num_layers=2",
    "--set", "max_epoch=1", "--set", "max_max_epoch=2", "--max-steps", "48",
]  # fmt: skip


def torchrun(*args, processes=2, env=None):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "ptblm", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), sentences=400)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """The same run, uninterrupted, by one process ("one") and by two ("two")."""
    runs = tmp_path_factory.mktemp("runs")
    single = ptblm("train", *SETTINGS, "--corpus", corpus, "--runs-dir", runs, "--name", "one")
    assert single.returncode == 0, single.stderr
    double = torchrun("train", *SETTINGS, "--corpus", corpus, "--runs-dir", runs, "--name", "two")
    assert double.returncode == 0, double.stderr
    return runs, double


def test_two_processes_train_the_same_model_as_one(trained):
    runs, double = trained
    one = torch.load(runs / "one" / "last.pt", weights_only=True)
    two = torch.load(runs / "two" / "last.pt", weights_only=True)
    assert two["global_step"] == one["global_step"] == 48
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5)
    # The carried state of all rows is saved, in the single process's row order.
    for ours, theirs in zip(two["state"], one["state"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    metrics_one = json.loads((runs / "one" / "metrics.json").read_text())
    metrics_two = json.loads((runs / "two" / "metrics.json").read_text())
    for key in ("train_ppl", "valid_ppl", "test_ppl"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=1e-4), key
    assert metrics_two["world_size"] == 2
    # One set of logs and checkpoints: only rank 0 writes.
    assert len(list((runs / "two").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (runs / "two").iterdir() if p.name[0] not in "e.") == [
        "best.pt", "config.yaml", "last.pt", "metrics.json", "summary.json",
    ]  # fmt: skip
    assert double.stdout.count("Epoch 1:") == 1  # only rank 0 prints
    # Finished: any process count may ask, and hears that it is done.
    again = ptblm("train", "--resume", runs / "two")
    assert again.returncode == 0, again.stderr
    assert "has finished already" in again.stdout
    twice = torchrun("train", "--resume", runs / "two")  # every rank hears it from rank 0
    assert twice.returncode == 0, twice.stderr
    assert twice.stdout.count("has finished already") == 1
    assert twice.stdout.count("Run directory:") == 1  # the results, printed by rank 0 alone


def test_batch_size_must_divide_by_the_processes(tmp_path, corpus):
    result = torchrun(
        "train", *SETTINGS, "--set", "batch_size=5", "--corpus", corpus, "--runs-dir", tmp_path,
        processes=2,
    )  # fmt: skip
    # The ranks exit 2 (a config error); torchrun reports the first of them and exits 1 itself.
    assert result.returncode == 1, result.stderr
    assert re.search(r"exitcode\s*: 2 ", first_failure(result.stderr)), result.stderr
    message = (
        "error: batch_size 5 does not divide by the 2 processes: each trains an equal share of "
        "the rows. Use --set batch_size=N with N a multiple of 2, or another --nproc_per_node."
    )
    # Said once, by rank 0 (every rank finds the same config error); the only traceback is
    # torchrun's own report of the failure.
    assert result.stderr.splitlines().count(message) == 1, result.stderr
    assert result.stderr.count("does not divide") == 1
    assert "ptblm/train.py" not in result.stderr and "ptblm/cli.py" not in result.stderr


def test_a_download_that_fails_on_rank_0_stops_every_rank_with_its_message(tmp_path):
    """Rank 0 downloads while the others wait: its failure must reach them, not leave them
    waiting in a barrier until torchrun tears them down."""
    result = torchrun(
        "train", *SETTINGS, "--data-dir", tmp_path / "data", "--runs-dir", tmp_path / "runs",
        env={"PTBLM_DATA_URL": dead_url()},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert re.search(r"exitcode\s*: 1 ", first_failure(result.stderr)), result.stderr
    assert result.stderr.count("error: could not download") == 1, result.stderr
    assert "ptblm/data.py" not in result.stderr and "ptblm/cli.py" not in result.stderr
    assert not (tmp_path / "runs").exists()


def first_failure(stderr: str) -> str:
    """torchrun's report of the first worker that failed ("Root Cause")."""
    return stderr.split("Root Cause (first observed failure):")[1]


def test_sigterm_on_one_rank_stops_every_rank_after_the_same_window(tmp_path, corpus, trained):
    """A scheduler that preempts one worker: rank 1 gets SIGTERM while it holds before window
    6; rank 0, never signalled, stops after the same window, last.pt holds all rows, and rank 0
    says how to resume. A single process may not resume it; two resume it to the very weights
    of the uninterrupted two-process run."""
    args = ["train", *SETTINGS, "--quiet", "--corpus", corpus, "--runs-dir", tmp_path]
    args += ["--name", "preempted"]
    run = HeldRun(corpus, tmp_path, "preempted", "step:5", args=args, processes=2, hold_rank=1)
    run.wait_held()
    os.kill(run.held_pid(), signal.SIGTERM)  # rank 1's worker only
    run.release()
    returncode, _, stderr = run.finish()
    # torchrun's code when a worker exits non-zero; the signalled worker's own is 143, not a
    # SIGABRT at interpreter exit (about one stop in ten before cli.main left with os._exit).
    assert returncode == 1, stderr
    assert "exitcode  : 143" in stderr and "SIGABRT" not in stderr, stderr
    stopped = f"SIGTERM received: stopped at step 6 (epoch 1) and saved {tmp_path / 'preempted'}"
    assert stderr.count(stopped) == 1  # rank 0's message, heard from rank 1
    assert f"Continue with: ptblm train --resume {tmp_path / 'preempted'}" in stderr
    assert "ptblm/train.py" not in stderr
    last = torch.load(tmp_path / "preempted" / "last.pt", weights_only=True)
    assert (last["global_step"], last["world_size"], last["finished"]) == (6, 2, False)
    assert last["state"][0].shape[1] == 20  # the carried state of both ranks' rows
    before = (tmp_path / "preempted" / "last.pt").read_bytes()
    result = ptblm("train", "--resume", tmp_path / "preempted")
    assert_clean_failure(
        result, 1, "trained by 2 process(es); resume it with as many (torchrun --nproc_per_node)"
    )
    assert (tmp_path / "preempted" / "last.pt").read_bytes() == before
    with open(tmp_path / "preempted" / ".lock") as held:  # as another ptblm training it would
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = torchrun("train", "--resume", tmp_path / "preempted")
    assert refused.returncode == 1 and "exitcode  : 1 " in first_failure(refused.stderr)
    assert refused.stderr.count("another ptblm process is training") == 1, refused.stderr
    assert "error (rank 1)" not in refused.stderr  # rank 0 has said it
    assert "Connection closed" not in refused.stderr  # rank 1's crash in the next collective
    assert re.search(r"ptblm/\w+\.py", refused.stderr) is None  # no traceback through ptblm
    assert (tmp_path / "preempted" / "last.pt").read_bytes() == before
    resumed = torchrun("train", "--resume", tmp_path / "preempted")
    assert resumed.returncode == 0, resumed.stderr
    ours = torch.load(tmp_path / "preempted" / "last.pt", weights_only=True)
    theirs = torch.load(trained[0] / "two" / "last.pt", weights_only=True)
    assert ours["global_step"] == theirs["global_step"] == 48
    for name, tensor in theirs["model"].items():
        assert torch.equal(ours["model"][name], tensor), name
    ours = json.loads((tmp_path / "preempted" / "metrics.json").read_text())
    theirs = json.loads((trained[0] / "two" / "metrics.json").read_text())
    assert (ours["valid_ppl"], ours["test_ppl"]) == (theirs["valid_ppl"], theirs["test_ppl"])
