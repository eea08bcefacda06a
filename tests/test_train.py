import json
import math
import signal
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    cpu_has_native_bf16_by_its_flags,
    make_corpus,
    model_from_file,
    plain_perplexity,
)

from ptblm.config import load_config
from ptblm.data import load_corpus
from ptblm.errors import ConfigError, DivergenceError, Interrupted
from ptblm.evaluate import evaluate
from ptblm.model import perplexity
from ptblm.results import format_summary
from ptblm.resume import load_resumable
from ptblm.signals import StopOnSignal
from ptblm.step import EagerStep
from ptblm.train import EpochEnd, Trainer


@pytest.fixture
def corpus(tmp_path):
    return load_corpus(corpus_dir=make_corpus(tmp_path / "corpus"))


def make_trainer(corpus, run_dir, *overrides, max_steps=None, eval_tokens=None):
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
        config,
        corpus,
        run_dir,
        torch.device("cpu"),
        max_steps=max_steps,
        eval_tokens=eval_tokens,
        verbose=False,
    )


def test_cpu_threads_follow_the_load_and_the_run_counts_windows_at_each(
    corpus, tmp_path, monkeypatch
):
    """--threads left to ptblm: alone at the start it takes both cores; another busy process
    seen at the first log point takes one back, and metrics.json says how many windows trained
    at each count. (Every other test fixes the count with OMP_NUM_THREADS.)"""
    from ptblm import runtime

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(runtime, "cpu_count", lambda: 2)
    others = iter([0])  # busy processes elsewhere: none at the start, one from then on
    monkeypatch.setattr(runtime, "busy_elsewhere", lambda: next(others, 1))
    try:
        threads = runtime.Threads()
        assert threads.adaptive and torch.get_num_threads() == 2
        trainer = make_trainer(corpus, tmp_path / "run", max_steps=60)
        trainer.threads = threads
        metrics = trainer.run()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    first = trainer.log_every  # the first log point's windows, trained on both cores
    assert 0 < first < 60
    assert metrics["threads"] == "auto"
    assert metrics["windows_by_threads"] == {"2": first, "1": 60 - first}
    assert "CPU threads followed the machine's load" in format_summary(
        metrics, trainer.run_dir.path
    )


def sigterm_after(monkeypatch, windows):
    """A real SIGTERM to this process right after the `windows`-th training window."""
    step, done = EagerStep.__call__, [0]

    def stepping(self, x, y):
        step(self, x, y)
        done[0] += 1
        if done[0] == windows:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(EagerStep, "__call__", stepping)


def interrupt_then_resume(monkeypatch, trainer, windows, meanwhile=lambda run_dir: None):
    """Run `trainer` until a SIGTERM after `windows` windows stops it, call `meanwhile(run_dir)`,
    then resume its run directory as `ptblm train --resume` does (its checkpoint and config); the
    resumed run's metrics and Trainer."""
    with monkeypatch.context() as patch, pytest.raises(Interrupted) as stopped:
        sigterm_after(patch, windows)
        trainer.run()
    assert stopped.value.exit_code == 143
    trainer.run_dir._lock.close()  # as the stopped process would at its exit
    meanwhile(trainer.run_dir.path)
    checkpoint, config, path = load_resumable(trainer.run_dir.path)
    assert checkpoint["global_step"] == windows and not checkpoint["finished"]
    resumed = Trainer(
        config, trainer.corpus, trainer.run_dir.path, torch.device("cpu"), verbose=False,
        resume=(checkpoint, path),
    )  # fmt: skip
    return resumed.run(), resumed


def test_a_stop_keeps_the_open_intervals_training_time_and_not_the_saves(
    corpus, tmp_path, monkeypatch
):
    """On a clock that moves only in training windows (1 s each) and saves (100 s each): last.pt
    of a stop between two log points holds the windows' seconds since the last point. Resumed
    without them, those windows counted as trained in no time (speed shown ~20x too high)."""
    import ptblm.train as train_module

    clock = [0.0]
    monkeypatch.setattr(train_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    step, save = EagerStep.__call__, Trainer.save

    def stepping(self, x, y):
        step(self, x, y)
        clock[0] += 1.0

    def saving(self, name):
        clock[0] += 100.0
        save(self, name)

    monkeypatch.setattr(EagerStep, "__call__", stepping)
    monkeypatch.setattr(Trainer, "save", saving)
    trainer = make_trainer(corpus, tmp_path / "run")
    windows = trainer.log_every + 3  # three windows after the first log point
    assert trainer.log_every > 3 and windows < trainer.windows_per_epoch
    sigterm_after(monkeypatch, windows)
    with pytest.raises(Interrupted):
        trainer.run()
    checkpoint = torch.load(trainer.run_dir.path / "last.pt", weights_only=True)
    assert checkpoint["train_seconds"] == trainer.log_every  # the first interval, closed
    assert checkpoint["interval_seconds"] == 3.0  # the open one: its windows, not the save


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
        trainer.run_state.epoch = epoch
        assert trainer.train_epoch(StopOnSignal()) is EpochEnd.COMPLETE
        trainer.run_state.window = 0
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
    # every window counted once, with the threads torch computed with (this process: fixed)
    threads = str(torch.get_num_threads())
    assert metrics["windows_by_threads"] == {threads: metrics["global_step"]}
    assert 1 < metrics["test_ppl"] < len(corpus.vocab)  # it learned something
    assert metrics["train_wps"] > 0
    assert metrics["variant"] == {}  # the faithful model
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["best_valid_ppl"] == metrics["best_valid_ppl"]
    # At an epoch's end no state is carried: the next epoch starts from zeros (checkpoint.py).
    assert best["state"] is None and torch.load(run / "last.pt", weights_only=True)["state"] is None


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


def test_a_divergence_before_any_checkpoint_says_so_and_suggests_only_what_applies(
    corpus, tmp_path
):
    trainer = make_trainer(corpus, tmp_path / "run", "learning_rate=1e30", "max_grad_norm=1e30")
    with pytest.raises(DivergenceError) as raised:
        trainer.run()
    message = str(raised.value)
    assert "No checkpoint was saved" in message and "intact" not in message
    assert "--precision" not in message  # the run is fp32 already


@pytest.mark.parametrize(
    ("overrides", "fix"),
    [
        # The first window's loss comes from the initial weights alone: the learning rate is
        # innocent there.
        (["init_scale=1e30"], "Lower init_scale (--set init_scale=...)."),
        (["weight_decay=1e30"], "Lower learning_rate, weight_decay or max_grad_norm"),
    ],
)
def test_the_divergence_message_names_the_setting_that_can_have_caused_it(
    corpus, tmp_path, overrides, fix
):
    trainer = make_trainer(corpus, tmp_path / "run", *overrides)
    with pytest.raises(DivergenceError) as raised:
        trainer.run()
    message = str(raised.value)
    assert fix in message
    assert ("at step 1 " in message) == overrides[0].startswith("init_scale")


def test_a_divergence_found_windows_later_by_the_graphed_step_is_placed_at_its_window(
    corpus, tmp_path, monkeypatch
):
    """GraphStep (CUDA's step; on the CPU it runs uncaptured) reads its windows back once per
    log interval: the loop must count back to the window that diverged, which the eager step
    reports at once."""
    import ptblm.train
    from ptblm.step import GraphStep

    said = {}
    for graphed in (False, True):
        if graphed:
            monkeypatch.setattr(ptblm.train, "make_step", lambda m, o, c, d: GraphStep(m, o, c))
        run_dir = tmp_path / f"graphed-{graphed}"
        trainer = make_trainer(corpus, run_dir, "learning_rate=1e30", "max_grad_norm=1e30")
        trainer.log_every = 50  # windows queued between two read-backs
        with pytest.raises(DivergenceError) as raised:
            trainer.run()
        summary = json.loads((run_dir / "summary.json").read_text())
        said[graphed] = (str(raised.value).split(" (epoch")[0], summary["diverged_at_step"])
    assert isinstance(trainer.step, GraphStep) and trainer.windows_per_epoch >= 4
    assert said[True] == said[False] == ("training diverged at step 2", 2)


def test_bf16_trains_where_the_cpu_has_it_and_is_refused_where_not(corpus, tmp_path):
    """On every machine one of the two is exercised for real; neither is skipped."""
    if not cpu_has_native_bf16_by_its_flags():
        with pytest.raises(ConfigError, match="no native bf16.*use --precision fp32"):
            make_trainer(corpus, tmp_path / "run", "precision=bf16", max_steps=5)
        assert not (tmp_path / "run").exists()
        return
    trainer = make_trainer(corpus, tmp_path / "run", "precision=bf16", max_steps=5)
    fp32 = make_trainer(corpus, tmp_path / "fp32", max_steps=5)
    metrics = trainer.run()
    fp32_metrics = fp32.run()
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(s.dtype == torch.float32 for s in trainer.step.state)
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())
    # Lower precision, so not the same numbers, but the same training.
    assert metrics["train_ppl"] != fp32_metrics["train_ppl"]
    assert metrics["train_ppl"] == pytest.approx(fp32_metrics["train_ppl"], rel=0.05)


def test_bf16_trains_with_fp32_weights_on_every_cpu(corpus, tmp_path, monkeypatch):
    """The bf16 training path itself, on whichever CPU runs the suite: the CPU is taken to have
    native bf16 (an AVX2-only one computes it slowly, which 5 windows of a hidden_size 8 model
    can afford), with the reference cell so that oneDNN's fused bf16 LSTM is not needed."""
    import ptblm.runtime as runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    bf16 = make_trainer(corpus, tmp_path / "bf16", "precision=bf16", "cell=reference", max_steps=5)
    fp32 = make_trainer(corpus, tmp_path / "fp32", "cell=reference", max_steps=5)
    metrics, fp32_metrics = bf16.run(), fp32.run()
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    saved = torch.load(tmp_path / "bf16" / "last.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in saved["model"].values())
    assert metrics["precision"] == "bf16" and fp32_metrics["precision"] == "fp32"
    assert metrics["train_ppl"] != fp32_metrics["train_ppl"]  # bf16 products did run
    assert metrics["train_ppl"] == pytest.approx(fp32_metrics["train_ppl"], rel=0.05)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ConfigError, match="no native bf16.*use --precision fp32"):
        make_trainer(corpus, tmp_path / "refused", "precision=bf16", max_steps=5)
    assert not (tmp_path / "refused").exists()


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
    on_best = plain_perplexity(model_from_file(tmp_path / "run" / "best.pt"), corpus.test)
    on_last = plain_perplexity(model_from_file(tmp_path / "run" / "last.pt"), corpus.test)
    assert on_best != pytest.approx(on_last, rel=1e-4)  # the two can be told apart
    assert metrics["best_test_ppl"] == pytest.approx(on_best, rel=1e-5)
    assert metrics["test_ppl"] == pytest.approx(on_last, rel=1e-5)


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


def test_20_windows_with_either_cell_give_the_same_weights_and_the_same_perplexity(
    corpus, tmp_path
):
    runs = {}
    for cell in ("fused", "reference"):
        trainer = make_trainer(corpus, tmp_path / cell, f"cell={cell}", "seed=3", max_steps=20)
        runs[cell] = (trainer, trainer.run())
    fused, reference = runs["fused"][0].model, runs["reference"][0].model
    for (name, ours), theirs in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6, msg=name)
    # A run trained with one cell evaluates to the same perplexity with the other.
    from ptblm.evaluate import evaluate_checkpoints

    last = tmp_path / "fused" / "last.pt"
    as_trained = evaluate_checkpoints([last], corpus_dir=corpus.folder)
    other = evaluate_checkpoints([last], corpus_dir=corpus.folder, cell="reference")
    assert other["cell"] == "reference" and as_trained["cell"] == "fused"
    independent = plain_perplexity(model_from_file(last), corpus.test)
    assert other["perplexity"] == pytest.approx(independent, rel=1e-5)
    assert as_trained["perplexity"] == pytest.approx(independent, rel=1e-5)
    assert runs["fused"][1]["test_ppl"] == pytest.approx(independent, rel=1e-5)


def test_weight_decay_adds_lr_times_decay_times_the_weights_to_the_update(corpus, tmp_path):
    """SGD with weight decay: w <- w - lr * (clipped gradient + weight_decay * w). From the same
    initial weights and the same first window, the decayed run's weights differ from the plain
    run's by exactly -lr * weight_decay * w0 (small: lr 1.0, no dropout)."""
    plain = make_trainer(corpus, tmp_path / "plain", max_steps=1)
    decayed = make_trainer(corpus, tmp_path / "decayed", "weight_decay=0.5", max_steps=1)
    trained = [p for p in decayed.model.parameters() if p.requires_grad]
    initial = [p.detach().clone() for p in trained]
    for ours, theirs in zip(plain.model.parameters(), decayed.model.parameters()):
        assert torch.equal(ours, theirs)  # one seed, one initialisation
    plain.run(), decayed.run()
    plain_trained = [p for p in plain.model.parameters() if p.requires_grad]
    for w0, ours, theirs in zip(initial, trained, plain_trained, strict=True):
        assert not torch.equal(ours, w0)  # the window did update it
        torch.testing.assert_close(ours - theirs, -1.0 * 0.5 * w0, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        ["tie_weights=true"],
        ["dropout_mode=variational", "keep_prob=0.5"],
        ["embedding_dropout=0.2", "weight_drop=0.3", "keep_prob=0.5"],
        ["cell=reference", "recurrent_dropout=0.3", "forget_bias=1.0"],
    ],
    ids=["tied", "variational", "embedding-and-weight-drop", "reference-recurrent"],
)
def test_every_variant_trains_saves_and_resumes(corpus, tmp_path, options, monkeypatch):
    """Each variant, stopped by SIGTERM after 4 of its 8 windows (--max-steps 8) and resumed,
    ends bitwise where the uninterrupted run ends: the dropout generators, the carried state and
    --max-steps come back from the checkpoint. Its test perplexity is the saved model's,
    computed independently."""
    straight = make_trainer(corpus, tmp_path / "straight", *options, max_steps=8).run()
    assert math.isfinite(straight["test_ppl"]) and straight["test_ppl"] < len(corpus.vocab)
    named = {option.split("=")[0] for option in options} - {"keep_prob"}
    assert set(straight["variant"]) == named  # the summary names what the model adds
    trainer = make_trainer(corpus, tmp_path / "run", *options, max_steps=8)
    metrics, resumed = interrupt_then_resume(monkeypatch, trainer, windows=4)
    assert metrics["global_step"] == 8 == resumed.run_state.max_steps  # --max-steps kept
    assert (metrics["train_ppl"], metrics["valid_ppl"], metrics["test_ppl"]) == (
        straight["train_ppl"], straight["valid_ppl"], straight["test_ppl"],
    )  # fmt: skip
    ours = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    theirs = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    independent = plain_perplexity(model_from_file(tmp_path / "run" / "last.pt"), corpus.test)
    assert metrics["test_ppl"] == pytest.approx(independent, rel=1e-5)


def test_eval_tokens_shortens_validation_and_test_and_says_so(corpus, tmp_path, monkeypatch):
    from ptblm.results import format_summary

    with pytest.raises(ConfigError, match="--eval-tokens 10: validation needs .* 24 tokens"):
        make_trainer(corpus, tmp_path / "tiny", max_steps=3, eval_tokens=10)
    longest = max(corpus.valid.numel(), corpus.test.numel())
    with pytest.raises(ConfigError, match=f"--eval-tokens {longest}: the valid and test splits"):
        make_trainer(corpus, tmp_path / "whole", max_steps=3, eval_tokens=longest)
    make_trainer(corpus, tmp_path / "one-prefix", max_steps=3, eval_tokens=longest - 1)
    trainer = make_trainer(corpus, tmp_path / "run", max_steps=3, eval_tokens=100)
    # Stopped after 2 windows and resumed: the resumed run still tests on 100 tokens only.
    metrics, resumed = interrupt_then_resume(monkeypatch, trainer, windows=2)
    on_100 = plain_perplexity(resumed.model, corpus.test[:100])
    assert on_100 != pytest.approx(plain_perplexity(resumed.model, corpus.test), rel=1e-3)
    assert metrics["test_ppl"] == pytest.approx(on_100, rel=1e-5)
    # Validation too (the training's batch_size 4 and num_steps 5) on the first 100 tokens only.
    valid = [
        perplexity(*evaluate(resumed.model, ids, 4, 5))
        for ids in (corpus.valid[:100], corpus.valid)
    ]
    assert valid[0] != pytest.approx(valid[1], rel=1e-3)
    assert metrics["valid_ppl"] == pytest.approx(valid[0], rel=1e-5)
    assert "--eval-tokens" in format_summary(metrics, tmp_path / "run")


def test_a_signal_during_validation_or_the_test_pass_ends_it_after_one_window(tmp_path):
    """Validation and the test pass look at the stop flag after every window, so a signal there
    costs one window, not a whole pass (the loop then saves last.pt and exits)."""
    corpus = load_corpus(corpus_dir=make_corpus(tmp_path / "corpus", sentences=1500))
    trainer = make_trainer(corpus, tmp_path / "run", max_steps=1)
    windows = []
    forward = trainer.model.forward
    trainer.model.forward = lambda ids, state: windows.append(ids.shape) or forward(ids, state)

    def windows_of(evaluation, stop):
        windows.clear()
        assert math.isfinite(evaluation(stop))
        return len(windows)

    validate = trainer.validate
    test = lambda stop: trainer.test(trainer.model, stop)  # noqa: E731
    assert windows_of(validate, StopOnSignal()) > 1 and windows_of(test, StopOnSignal()) > 1
    stopped = StopOnSignal()
    stopped.received = signal.SIGTERM
    assert windows_of(validate, stopped) == 1 and windows_of(test, stopped) == 1


def test_a_lost_best_pt_is_said_at_resume_and_the_run_still_finishes(
    corpus, tmp_path, monkeypatch, capsys
):
    """best.pt is tested only after training: a missing one was found only then, and the run
    could never finish. Now it is said at the resume, and the run finishes without it."""
    by_epoch = {0: 40.0, 1: 50.0, 2: 60.0}  # epoch 1 stays the best: best.pt is never rewritten
    monkeypatch.setattr(Trainer, "validate", lambda self, stop: by_epoch[self.run_state.epoch])
    trainer = make_trainer(corpus, tmp_path / "run", "max_epoch=1", "max_max_epoch=3")
    lose = lambda run_dir: (run_dir / "best.pt").unlink()  # noqa: E731
    windows = trainer.windows_per_epoch + 2
    metrics, _ = interrupt_then_resume(monkeypatch, trainer, windows, meanwhile=lose)
    best = tmp_path / "run" / "best.pt"
    said = capsys.readouterr().err
    assert said.count(f"warning: {best}: no such checkpoint file.") == 2  # at resume, at the end
    assert "Put it back before training ends" in said
    assert metrics["status"] == "finished" and metrics["best_valid_ppl"] == 40.0
    assert metrics["best_test_ppl"] is None and metrics["best_untested"] is True
    assert math.isfinite(metrics["test_ppl"])
    assert (
        format_summary(metrics, tmp_path / "run")
        .splitlines()[-1]
        .startswith("best.pt: valid 40.00, not tested (missing or damaged).  ")
    )
