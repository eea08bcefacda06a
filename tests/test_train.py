import copy
import math

import pytest
import torch
from helpers import make_corpus
from torch import nn

from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.errors import DivergenceError
from ptblm.train import NullWriter, StopOnSignal, Trainer, learning_rate_at


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(corpus_dir=make_corpus(tmp_path / "corpus"))


def make_trainer(corpus, run_dir, *overrides, max_steps=None):
    config = load_config(
        "small",
        [
            f"vocab_size={len(corpus.vocab)}",
            "hidden_size=8",
            "num_steps=5",
            "batch_size=4",
            *overrides,
        ],
    )
    return Trainer(
        config, corpus, run_dir, torch.device("cpu"), max_steps=max_steps, progress=False
    )


def test_learning_rate_schedule_matches_the_tutorial():
    small = load_config("small")
    assert [learning_rate_at(small, epoch) for epoch in range(13)] == [
        1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625,
        0.0078125, 0.00390625, 0.001953125,
    ]  # fmt: skip
    medium = load_config("medium")
    assert learning_rate_at(medium, 5) == 1.0
    assert learning_rate_at(medium, 6) == pytest.approx(0.8)
    assert learning_rate_at(medium, 38) == pytest.approx(0.8**33)
    large = load_config("large")
    assert learning_rate_at(large, 13) == 1.0
    assert learning_rate_at(large, 54) == pytest.approx((1 / 1.15) ** 41)


def reference_sgd_step(model, x, y, state, lr, max_grad_norm):
    """The update written out from REFERENCE.md, independently of ptblm's loop."""
    logits, _ = model(x, state)
    loss = sum(nn.functional.cross_entropy(logits[:, t], y[:, t]) for t in range(x.size(1)))
    model.zero_grad()
    loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params))
    scale = min(1.0, max_grad_norm / (norm.item() + 1e-6))
    with torch.no_grad():
        for p in params:
            p -= lr * scale * p.grad
    return norm.item()


@pytest.mark.parametrize("max_grad_norm", [1000.0, 0.05])
def test_one_window_is_the_reference_sgd_step_with_global_norm_clipping(
    corpus, tmp_path, max_grad_norm
):
    trainer = make_trainer(
        corpus, tmp_path / "run", "learning_rate=0.7", f"max_grad_norm={max_grad_norm}"
    )
    reference = copy.deepcopy(trainer.model)
    x, y = trainer.train_data[:, 0:5], trainer.train_data[:, 1:6]
    state = trainer.model.initial_state(4)
    trainer.state = state
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.7
    before = [p.detach().clone() for p in trainer.model.parameters()]
    _, norm = trainer.train_window(x, y)
    expected_norm = reference_sgd_step(reference, x, y, state, 0.7, max_grad_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-5)
    for ours, theirs in zip(trainer.model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    update = torch.sqrt(
        sum(((a - b) ** 2).sum() for a, b in zip(trainer.model.parameters(), before))
    )
    if max_grad_norm < norm:
        # Clipped: the whole update has norm lr * max_grad_norm.
        assert update.item() == pytest.approx(0.7 * max_grad_norm, rel=1e-3)
    else:
        assert update.item() == pytest.approx(0.7 * norm, rel=1e-3)


def test_state_is_carried_detached_across_windows_and_zeroed_each_epoch(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path / "run")
    seen = []  # (input state, output state) of every training forward
    forward = trainer.model.forward

    def spy(ids, state):
        logits, new_state = forward(ids, state)
        seen.append(
            ([s.detach().clone() for s in state], [s.detach().clone() for s in new_state], state)
        )
        return logits, new_state

    trainer.model.forward = spy
    for epoch in range(2):
        trainer.position.epoch = epoch
        assert trainer.train_epoch(NullWriter(), StopOnSignal()) == "complete"
        trainer.position.window = 0
    windows = trainer.windows_per_epoch
    assert len(seen) == 2 * windows
    for index, (state_in, _, raw_in) in enumerate(seen):
        assert all(s.grad_fn is None and not s.requires_grad for s in raw_in)
        if index % windows == 0:
            assert all(torch.count_nonzero(s) == 0 for s in state_in)  # new epoch: zero state
        else:
            previous_out = seen[index - 1][1]
            for a, b in zip(state_in, previous_out):
                assert torch.equal(a, b)  # row r continues row r


def test_run_writes_metrics_and_checkpoints_and_picks_the_best(corpus, tmp_path):
    trainer = make_trainer(
        corpus, tmp_path / "run", "max_epoch=1", "max_max_epoch=3", "learning_rate=0.5"
    )
    metrics = trainer.run()
    run = tmp_path / "run"
    assert {"config.yaml", "best.pt", "last.pt", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert metrics["epochs"] == 3 and len(metrics["history"]) == 3
    assert [h["learning_rate"] for h in metrics["history"]] == [0.5, 0.25, 0.125]
    assert metrics["best_valid_ppl"] == min(h["valid_ppl"] for h in metrics["history"])
    assert metrics["global_step"] == 3 * trainer.windows_per_epoch
    assert 1 < metrics["test_ppl"] < len(corpus.vocab)  # it learned something
    assert metrics["train_wps"] > 0
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["best_valid_ppl"] == metrics["best_valid_ppl"]


def test_max_steps_stops_then_validates_tests_and_saves(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path / "run", max_steps=7)
    metrics = trainer.run()
    assert metrics["global_step"] == 7
    assert metrics["history"][0]["windows"] == 7
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["global_step"] == 7 and last["finished"]
    assert math.isfinite(metrics["test_ppl"])


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    trainer = make_trainer(
        corpus, tmp_path / "run", "learning_rate=1e30", "max_grad_norm=1e30", "checkpoint_every=1"
    )
    with pytest.raises(DivergenceError) as raised:
        trainer.run()
    message = str(raised.value)
    assert "learning rate 1e+30" in message and "step" in message and "epoch 1" in message
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    # Every weight in the saved checkpoint is finite: the bad step never reached it.
    assert all(torch.isfinite(t).all() for t in last["model"].values())
    diverged_at = int(message.split("at step ")[1].split()[0])
    assert last["global_step"] == diverged_at - 1


def test_bf16_autocast_keeps_weights_state_and_checkpoints_fp32(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path / "run", "precision=bf16", max_steps=5)
    fp32 = make_trainer(corpus, tmp_path / "fp32", max_steps=5)
    metrics = trainer.run()
    fp32_metrics = fp32.run()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(s.dtype == torch.float32 for s in trainer.state)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())
    # Lower precision, so not the same numbers, but the same training.
    assert metrics["train_ppl"] != fp32_metrics["train_ppl"]
    assert metrics["train_ppl"] == pytest.approx(fp32_metrics["train_ppl"], rel=0.05)


def test_fp16_and_cuda_are_refused_on_a_cpu(corpus, tmp_path):
    from ptblm.errors import ConfigError
    from ptblm.train import resolve_device

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        make_trainer(corpus, tmp_path / "run", "precision=fp16")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_best_pt_keeps_the_lowest_validation_and_is_tested_as_such(corpus, tmp_path, monkeypatch):
    trainer = make_trainer(corpus, tmp_path / "run", "max_epoch=1", "max_max_epoch=3")
    scores = iter([50.0, 40.0, 45.0])  # epoch 2 is the best; epoch 3 is worse
    monkeypatch.setattr(trainer, "validate", lambda stop: next(scores))
    metrics = trainer.run()
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert best["global_step"] == 2 * trainer.windows_per_epoch
    assert last["global_step"] == 3 * trainer.windows_per_epoch and last["finished"]
    assert metrics["best_valid_ppl"] == 40.0 and metrics["valid_ppl"] == 45.0
    # best_test_ppl is best.pt's own test perplexity, not the final model's.
    from ptblm.evaluate import evaluate_checkpoint

    on_best = evaluate_checkpoint(tmp_path / "run" / "best.pt", corpus_dir=corpus.folder)
    on_last = evaluate_checkpoint(tmp_path / "run" / "last.pt", corpus_dir=corpus.folder)
    assert metrics["best_test_ppl"] == on_best["perplexity"] != on_last["perplexity"]
    assert metrics["test_ppl"] == on_last["perplexity"]


def test_the_learning_rate_in_the_optimizer_follows_the_schedule(corpus, tmp_path, monkeypatch):
    trainer = make_trainer(
        corpus, tmp_path / "run", "max_epoch=2", "max_max_epoch=4", "lr_decay=0.5"
    )
    seen = []
    step = trainer.optimizer.step

    def spy(*args, **kwargs):
        seen.append(trainer.optimizer.param_groups[0]["lr"])
        return step(*args, **kwargs)

    monkeypatch.setattr(trainer.optimizer, "step", spy)
    trainer.run()
    per_epoch = trainer.windows_per_epoch
    assert seen == [1.0] * (2 * per_epoch) + [0.5] * per_epoch + [0.25] * per_epoch


def test_a_corpus_too_short_for_the_config_is_refused_before_training(tmp_path):
    from ptblm.errors import DataError

    corpus = load_corpus(corpus_dir=make_corpus(tmp_path / "c", sentences=300))
    with pytest.raises(DataError, match="valid split .* too few for one window"):
        make_trainer(corpus, tmp_path / "run", "num_steps=200")
    assert not (tmp_path / "run").exists()
