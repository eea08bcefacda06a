"""The GPU path, run on a CUDA machine: `pytest -m cuda` (scripts/gpu_check.py runs them).

Without CUDA these tests are deselected (conftest.py), not skipped: CI has no GPU and says
"N deselected". Every check uses the full-size shapes of the configs on a synthetic corpus of
10,000 word types, so no download is needed.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
from helpers import make_corpus

from ptblm.checkpoint import model_from_checkpoint
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import load_config
from ptblm.data import batchify, load_corpus, windows
from ptblm.divergence import Diverged
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel
from ptblm.runtime import configure_tf32
from ptblm.signals import StopOnSignal
from ptblm.step import EagerStep, GraphStep
from ptblm.train import Trainer

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = make_corpus(tmp_path_factory.mktemp("corpus"), vocab_size=10000, sentences=4000)
    return load_corpus(corpus_dir=folder)


@pytest.fixture(autouse=True)
def faithful_tf32():
    configure_tf32(False)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def seeded_model(config):
    """The config's model from seed 0, on the GPU. Built anew for each step compared: a deep copy
    would split nn.LSTM's one block of weights, which cuDNN then copies on every call (with a
    warning)."""
    torch.manual_seed(0)
    return LSTMLanguageModel.from_config(config).to(CUDA)


def sgd(model, lr=1.0):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)


def trainer(corpus, run_dir, name, *overrides, device=CUDA, max_steps=6):
    config = load_config(name, ["checkpoint_every=0", *overrides])
    return Trainer(config, corpus, run_dir, device, max_steps=max_steps, verbose=False)


@pytest.mark.parametrize(
    "name", ["small", "medium", "large", "medium-tied", "medium-variational-tied"]
)
def test_each_config_trains_on_cuda_in_fp32(corpus, tmp_path, name):
    run = trainer(corpus, tmp_path / "run", name)
    assert isinstance(run.step, GraphStep)
    before = [p.detach().clone() for p in run.model.parameters()]
    run.train_epoch(StopOnSignal())
    assert (
        run.run_state.global_step == 6
        and run.run_state.train_tokens == 6 * 20 * run.config.num_steps
    )
    assert math.isfinite(run.run_state.train_nll) and run.run_state.train_nll > 0
    assert run.step.graph is not None  # captured, not refused
    changed = [not torch.equal(a, b) for a, b in zip(before, run.model.parameters())]
    assert sum(changed) >= len(changed) - 2  # all but the frozen bias_hh moved


@pytest.mark.parametrize("name", ["small", "medium", "large"])
def test_the_graphed_step_equals_the_eager_step(corpus, name):
    """Dropout off (its masks come from other random draws in a graph), the learning rate
    changed half way (a device tensor inside the graph)."""
    config = load_config(name, ["keep_prob=1.0"])
    eager_model, graph_model = seeded_model(config), seeded_model(config)
    eager = EagerStep(eager_model, sgd(eager_model), config, contextlib.nullcontext())
    graphed = GraphStep(graph_model, sgd(graph_model), config)
    eager.state = eager_model.initial_state(20, CUDA)
    graphed.state = None
    data = batchify(corpus.train, 20).to(CUDA)
    for index, (x, y) in enumerate(windows(data, config.num_steps)):
        if index == 8:
            break
        if index == 5:
            for step in (eager, graphed):
                step.optimizer.param_groups[0]["lr"] = 0.5
        eager(x, y)
        graphed(x, y)
    assert graphed.graph is not None
    ours, theirs = graphed.drain(), eager.drain()
    assert len(ours) == len(theirs) == 8
    for (nll_a, norm_a), (nll_b, norm_b) in zip(ours, theirs):
        assert nll_a == pytest.approx(nll_b, rel=1e-5) and norm_a == pytest.approx(norm_b, rel=1e-4)
    worst = max(
        relative_difference(a, b)
        for a, b in zip(graph_model.parameters(), eager_model.parameters())
    )
    print(f"\n{name}: graphed vs eager after 8 windows, max relative weight difference {worst:.2e}")
    assert worst < 1e-5
    for a, b in zip(graphed.state, eager.state):
        assert relative_difference(a, b) < 1e-4


def test_the_graphed_step_draws_new_dropout_masks_every_window(corpus):
    """The equality above has dropout off. With it on, every replay must draw new masks (masks
    frozen into the graph would train one thinned network): the same window, from the same zero
    state at learning rate 0, gives a different loss at every replay."""
    config = load_config("large")  # keep_prob 0.35
    model = seeded_model(config)
    step = GraphStep(model, sgd(model, lr=0.0), config)
    x, y = next(windows(batchify(corpus.train, 20).to(CUDA), config.num_steps))
    for _ in range(step.WARMUP + 4):
        step.state = None
        step(x, y)
    assert step.graph is not None
    replayed = [nll for nll, _ in step.drain()[step.WARMUP :]]
    assert len(set(replayed)) == len(replayed) == 4


@pytest.mark.parametrize("dropout", [0.65, 0.0], ids=["dropout", "control"])
def test_cudnn_draws_new_masks_between_the_layers_in_a_graph(dropout):
    """The masks cuDNN's LSTM applies between its layers come from a state of cuDNN's own, not
    from torch's generator: replays of one captured call on one input must differ, and, without
    dropout (the control), must not."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(1500, 1500, 2, batch_first=True, dropout=dropout).to(CUDA)
    x = torch.randn(20, 35, 1500, device=CUDA)
    side = torch.cuda.Stream()  # cuDNN's handle and dropout state made outside the capture
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        lstm(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output, _ = lstm(x)
    outputs = []
    for _ in range(3):
        graph.replay()
        outputs.append(output.detach().clone())
    differ = [not torch.equal(a, b) for a, b in zip(outputs, outputs[1:])]
    assert differ == [dropout > 0] * 2


def test_the_graphed_guard_is_sticky(corpus):
    """Captured, as test_step checks it uncaptured on the CPU: a window whose carried state is NaN
    diverges, and neither it nor the healthy window queued after it (its state reset to zeros)
    changes the weights."""
    config = load_config("small", ["keep_prob=1.0"])
    model = seeded_model(config)
    step = GraphStep(model, sgd(model), config)
    batches = windows(batchify(corpus.train, 20).to(CUDA), config.num_steps)
    for _ in range(step.WARMUP + 1):
        step(*next(batches))
    assert step.graph is not None and len(step.drain()) == step.WARMUP + 1
    kept = [p.detach().clone() for p in model.parameters()]
    nan = torch.full_like(step.h, math.nan)
    step.state = nan, nan
    step(*next(batches))
    step.state = None  # healthy on its own: only the guard's sticky flag can refuse it
    step(*next(batches))
    with pytest.raises(Diverged) as raised:
        step.drain()
    assert raised.value.windows_after == 1 and math.isnan(raised.value.mean_nll)
    assert all(torch.equal(a, b) for a, b in zip(kept, model.parameters()))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_trains_with_a_grad_scaler(corpus, tmp_path, precision):
    run = trainer(corpus, tmp_path / "run", "medium", f"precision={precision}", max_steps=10)
    assert isinstance(run.step, EagerStep) and run.step.scaler is not None
    run.train_epoch(StopOnSignal())
    assert math.isfinite(run.run_state.train_nll) and run.step.scaler.get_scale() > 0
    print(
        f"\n{precision}: cuDNN {torch.backends.cudnn.version()}, scale {run.step.scaler.get_scale()}"
    )


@pytest.mark.parametrize("keep_prob", ["1.0", "0.5"], ids=["no-dropout", "dropout"])
def test_resume_on_the_gpu_continues_the_run(corpus, tmp_path, keep_prob):
    """cuDNN's LSTM and the embedding's backward add with atomics, so a resumed GPU run equals
    an uninterrupted one statistically, not bitwise: without dropout the weights agree to 1e-4
    after 20 windows. With dropout, cuDNN draws the masks between the layers from a state of its
    own that no checkpoint holds, so only the loss agrees (to 2%)."""
    options = ["checkpoint_every=0", f"keep_prob={keep_prob}"]
    whole = trainer(corpus, tmp_path / "whole", "medium", *options[1:], max_steps=20)
    whole.train_epoch(StopOnSignal())
    half = trainer(corpus, tmp_path / "half", "medium", *options[1:], max_steps=10)
    half.train_epoch(StopOnSignal())
    half.save("last.pt")
    half.run_dir._lock.close()  # as the process would at its exit
    path = tmp_path / "half" / "last.pt"
    checkpoint = load_checkpoint(path)
    # A resume keeps the checkpoint's --max-steps: read it as a 20-window run stopped after 10.
    checkpoint["max_steps"] = 20
    config = load_config("medium", options)
    resumed = Trainer(
        config, corpus, tmp_path / "half", CUDA, verbose=False, resume=(checkpoint, path)
    )
    resumed.train_epoch(StopOnSignal())
    resumed.account(1.0)
    assert resumed.run_state.global_step == whole.run_state.global_step == 20
    worst = max(
        relative_difference(a, b)
        for a, b in zip(resumed.model.parameters(), whole.model.parameters())
    )
    nll = resumed.run_state.train_nll / whole.run_state.train_nll - 1
    print(f"\nresumed vs uninterrupted (keep_prob {keep_prob}), 20 windows: max relative weight "
          f"difference {worst:.2e}, training NLL {nll:+.2e}")  # fmt: skip
    if keep_prob == "1.0":
        assert worst < 1e-4 and abs(nll) < 1e-4
    else:
        assert abs(nll) < 0.02


@pytest.mark.parametrize("trained_on", ["cuda", "cpu"])
def test_a_checkpoint_evaluates_the_same_on_cpu_and_gpu(corpus, tmp_path, trained_on):
    run = trainer(corpus, tmp_path / "run", "small", device=torch.device(trained_on), max_steps=20)
    run.train_epoch(StopOnSignal())
    run.save("last.pt")
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    results = {}
    for device in ("cpu", "cuda"):
        model = model_from_checkpoint(checkpoint, tmp_path / "run" / "last.pt").to(device)
        nll, tokens = evaluate(model, corpus.test)
        results[device] = nll / tokens
    assert results["cuda"] == pytest.approx(results["cpu"], rel=1e-5)


@pytest.mark.parametrize("name", ["medium-variational-tied", "large-variational-tied"])
def test_weight_drop_and_variational_dropout_run_on_cudnn_without_copies(corpus, tmp_path, name):
    """Each layer's weights are one block cuDNN takes as is: no "not part of single contiguous
    chunk" warning (which means a copy of the weights on every call)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = trainer(corpus, tmp_path / "run", name, "cuda_graph=false")
        run.train_epoch(StopOnSignal())
        nll, _ = evaluate(run.model, corpus.valid[:2000], 20, 35)
    assert math.isfinite(nll)
    for k in range(run.model.num_layers):
        block = run.model.lstm.weight_ih_l0 if k == 0 else run.model.lstm.weight_ih_l1
        assert block.storage_offset() == 0  # each layer starts its own block
