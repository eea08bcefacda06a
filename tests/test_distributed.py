"""Multi-process training under torchrun: 2 CPU processes (gloo on 127.0.0.1) against one."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import make_corpus, ptblm

# No dropout: with it each rank draws its own masks, so the runs could not be compared.
SETTINGS = [
    "-c", "test", "--set", "vocab_size=40", "--set", "hidden_size=16", "--set", "num_layers=2",
    "--set", "max_epoch=1", "--set", "max_max_epoch=2", "--max-steps", "48",
]  # fmt: skip


def torchrun(*args, processes=2):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "ptblm", *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), sentences=400)


def test_two_processes_train_the_same_model_as_one(tmp_path, corpus):
    single = ptblm("train", *SETTINGS, "--corpus", corpus, "--runs-dir", tmp_path, "--name", "one")
    assert single.returncode == 0, single.stderr
    double = torchrun(
        "train", *SETTINGS, "--corpus", corpus, "--runs-dir", tmp_path, "--name", "two"
    )
    assert double.returncode == 0, double.stderr
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["global_step"] == one["global_step"] == 48
    for name, tensor in one["model"].items():
        torch.testing.assert_close(two["model"][name], tensor, rtol=1e-4, atol=1e-5)
    # The carried state of all rows is saved, in the single process's row order.
    for ours, theirs in zip(two["state"], one["state"]):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for key in ("train_ppl", "valid_ppl", "test_ppl"):
        assert metrics_two[key] == pytest.approx(metrics_one[key], rel=1e-4), key
    assert metrics_two["world_size"] == 2
    # One set of logs and checkpoints: only rank 0 writes.
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if p.name[0] not in "e.") == [
        "best.pt", "config.yaml", "last.pt", "metrics.json", "summary.json",
    ]  # fmt: skip
    assert double.stdout.count("Epoch 1:") == 1  # only rank 0 prints


def test_batch_size_must_divide_by_the_processes(tmp_path, corpus):
    result = torchrun(
        "train", *SETTINGS, "--set", "batch_size=5", "--corpus", corpus, "--runs-dir", tmp_path,
        processes=2,
    )  # fmt: skip
    assert result.returncode != 0
    assert "does not divide by the 2 processes" in result.stderr
    # Each rank says it in one line; the only traceback is torchrun's own report of the failure.
    assert "ptblm/train.py" not in result.stderr and "ptblm/cli.py" not in result.stderr
