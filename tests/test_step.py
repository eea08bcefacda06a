"""One training step against the update written out from docs/reference.md."""

import contextlib
import copy
import math

import pytest
import torch
from torch import nn

from ptblm.config import load_config
from ptblm.divergence import Diverged
from ptblm.model import LSTMLanguageModel
from ptblm.step import EagerStep, GraphStep


def make_step(max_grad_norm=5.0, learning_rate=0.7, seed=0, graphed=False, scaler=None):
    """A small model and its step: EagerStep (with `scaler`, if given) or, `graphed`, GraphStep
    (on the CPU it runs the very update its CUDA graph would hold, uncaptured)."""
    config = load_config(
        "small",
        [
            "vocab_size=30",
            "hidden_size=8",
            "num_steps=5",
            "batch_size=4",
            f"max_grad_norm={max_grad_norm}",
        ],
    )
    torch.manual_seed(seed)
    model = LSTMLanguageModel.from_config(config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=learning_rate)
    if graphed:
        return model, GraphStep(model, optimizer, config)
    return model, EagerStep(model, optimizer, config, contextlib.nullcontext(), scaler)


def train(step, x, y):
    """One window, read back: what either step made of it (Diverged where it made no update)."""
    step(x, y)
    return step.drain()


def reference_sgd_step(model, x, y, state, lr, max_grad_norm):
    """The update written out from docs/reference.md, independently of ptblm's loop."""
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
    return loss.item(), norm.item()


@pytest.mark.parametrize("max_grad_norm", [1000.0, 0.05])
def test_one_window_is_the_reference_sgd_step_with_global_norm_clipping(max_grad_norm):
    model, step = make_step(max_grad_norm)
    reference = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(1)
    data = torch.randint(30, (4, 6), generator=generator)
    x, y = data[:, :5], data[:, 1:]
    state = model.initial_state(4)
    step.state = state
    before = [p.detach().clone() for p in model.parameters()]
    ((mean_nll, norm),) = train(step, x, y)
    loss, expected_norm = reference_sgd_step(reference, x, y, state, 0.7, max_grad_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-5)
    assert mean_nll == pytest.approx(loss / 5, rel=1e-5)  # the window objective / num_steps
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    update = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(model.parameters(), before)))
    # Clipped: the whole update has norm lr * max_grad_norm; else lr * norm.
    assert update.item() == pytest.approx(0.7 * min(norm, max_grad_norm), rel=1e-3)


def test_with_a_grad_scaler_the_step_clips_and_reports_the_true_gradient():
    """fp16's path (a GradScaler) on the CPU: the scaled gradients are unscaled before clipping,
    so the norm reported and clipped is the true one and the update is the reference's."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    model, step = make_step(max_grad_norm=0.05, scaler=scaler)
    reference = copy.deepcopy(model)
    data = torch.randint(30, (4, 6), generator=torch.Generator().manual_seed(1))
    x, y = data[:, :5], data[:, 1:]
    step.state = state = model.initial_state(4)
    ((mean_nll, norm),) = train(step, x, y)
    loss, expected_norm = reference_sgd_step(reference, x, y, state, 0.7, 0.05)
    assert norm == pytest.approx(expected_norm, rel=1e-5) and expected_norm > 0.05  # clipped
    assert mean_nll == pytest.approx(loss / 5, rel=1e-5)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_the_state_is_carried_detached_into_the_next_window():
    model, step = make_step()
    data = torch.randint(30, (4, 11), generator=torch.Generator().manual_seed(2))
    step(data[:, :5], data[:, 1:6])
    carried = step.state
    assert all(t.grad_fn is None and not t.requires_grad for t in carried)
    with torch.no_grad():
        _, expected = model(data[:, 5:10], carried)
        _, from_zero = model(data[:, 5:10], model.initial_state(4))
    assert not torch.allclose(expected[0], from_zero[0])  # so carrying it matters
    step(data[:, 5:10], data[:, 6:11])
    # The second window started from the first one's final state: its own final state is what a
    # forward from the carried state gives (with the weights before the second update).
    for ours, theirs in zip(step.state, expected):
        torch.testing.assert_close(ours, theirs)


def test_a_diverged_window_never_reaches_the_weights():
    model, step = make_step(max_grad_norm=1e30, learning_rate=1e30)
    data = torch.randint(30, (4, 11), generator=torch.Generator().manual_seed(3))
    step(data[:, :5], data[:, 1:6])  # a finite loss: this huge update goes through
    after_first = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Diverged) as raised:
        step(data[:, 5:10], data[:, 6:11])
    assert not (math.isfinite(raised.value.mean_nll) and raised.value.mean_nll <= 10 * math.log(30))
    for before, now in zip(after_first, model.parameters()):
        assert torch.equal(before, now)


def test_the_graph_steps_device_side_update_is_the_eager_update():
    """GraphStep's window() is what its CUDA graph holds; on the CPU it runs uncaptured.
    Learning rate changed half way and weight decay on: both are device tensors there."""
    config = load_config("small", ["vocab_size=30", "hidden_size=8", "num_steps=5", "batch_size=4"])
    torch.manual_seed(0)
    eager_model = LSTMLanguageModel.from_config(config)
    graph_model = copy.deepcopy(eager_model)

    def sgd(model):
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.SGD(params, lr=0.7, weight_decay=0.01)

    eager = EagerStep(eager_model, sgd(eager_model), config, contextlib.nullcontext())
    graphed = GraphStep(graph_model, sgd(graph_model), config)
    eager.state = eager_model.initial_state(4)
    graphed.state = None
    data = torch.randint(30, (4, 41), generator=torch.Generator().manual_seed(4))
    for i in range(8):
        if i == 4:
            for step in (eager, graphed):
                step.optimizer.param_groups[0]["lr"] = 0.3
        x, y = data[:, 5 * i : 5 * i + 5], data[:, 5 * i + 1 : 5 * i + 6]
        assert graphed(x, y) is None  # nothing read back per window
        eager(x, y)
    ours, theirs = graphed.drain(), eager.drain()
    assert len(ours) == 8 and graphed.drain() == [] and eager.drain() == []
    for (nll_a, norm_a), (nll_b, norm_b) in zip(ours, theirs):
        assert nll_a == pytest.approx(nll_b, rel=1e-6) and norm_a == pytest.approx(norm_b, rel=1e-5)
    for a, b in zip(graph_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(graphed.state, eager.state):
        torch.testing.assert_close(a, b)


def test_the_graph_steps_guard_stops_every_update_from_the_diverged_window_on():
    model, step = make_step(max_grad_norm=1e30, learning_rate=0.1, graphed=True)
    optimizer = step.optimizer
    data = torch.randint(30, (4, 41), generator=torch.Generator().manual_seed(3))
    window = lambda i: (data[:, 5 * i : 5 * i + 5], data[:, 5 * i + 1 : 5 * i + 6])  # noqa: E731
    assert len(train(step, *window(0))) == 1
    optimizer.param_groups[0]["lr"] = 1e30
    step(*window(1))  # finite loss, a huge update: goes through and ruins the model
    after_huge = [p.detach().clone() for p in model.parameters()]
    optimizer.param_groups[0]["lr"] = 0.1  # too late: the next loss is already out of bounds
    step(*window(2))
    step(*window(3))
    with pytest.raises(Diverged) as raised:
        step.drain()
    assert raised.value.windows_after == 1  # window 2 diverged, window 3 queued after it
    assert not raised.value.mean_nll <= 10 * math.log(30)
    for before, now in zip(after_huge, model.parameters()):
        assert torch.equal(before, now)


def window_with_decoder_bias(bias: float, graphed: bool = False):
    """A step, and a window whose targets all avoid word 0, after which the decoder's bias for
    word 0 is `bias`: each target's loss is then about `bias` (within 2: hidden 8, weights within
    0.1), finite, with finite gradients."""
    model, step = make_step(graphed=graphed)
    with torch.no_grad():
        model.decoder.bias.zero_()
        model.decoder.bias[0] = bias
    data = torch.randint(1, 30, (4, 6), generator=torch.Generator().manual_seed(5))
    return model, step, data[:, :5], data[:, 1:]


@pytest.mark.parametrize("graphed", [False, True], ids=["eager", "graphed"])
def test_a_finite_loss_over_ten_times_log_vocab_per_token_is_divergence_on_its_own(graphed):
    """The bound is 10 x log(30) = 34.0 nats per token: a loss of about 30 trains, one of about
    50 (finite, with a finite gradient norm) is refused before the update."""
    model, step, x, y = window_with_decoder_bias(30.0, graphed)
    ((mean_nll, norm),) = train(step, x, y)
    assert 28 < mean_nll < 32 and math.isfinite(norm)  # under the bound: the update is made
    model, step, x, y = window_with_decoder_bias(50.0, graphed)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Diverged) as raised:
        train(step, x, y)
    assert 48 < raised.value.mean_nll < 52  # finite, over the bound, under 5 x the bound
    assert math.isfinite(raised.value.grad_norm)  # the loss alone tripped the guard
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert step.drain() == []  # nothing recorded as trained


def test_a_finite_loss_with_a_non_finite_gradient_is_divergence_on_its_own():
    """fp32 has no GradScaler to skip such a step: the guard refuses it."""
    model, step, x, y = window_with_decoder_bias(0.0)
    model.decoder.bias.register_hook(lambda grad: grad * math.inf)  # the real gradient, made inf
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(Diverged) as raised:
        step(x, y)
    assert not math.isfinite(raised.value.grad_norm)
    assert raised.value.mean_nll < 10 * math.log(30)  # an ordinary loss: the gradient tripped it
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert step.drain() == []


def test_the_graph_steps_guard_makes_no_update_after_a_diverged_window_even_a_healthy_one():
    """Only the first window's gradient is infinite; the second is healthy, but queued after a
    divergence that the host has not read yet: it must not update either."""
    model, step, x, y = window_with_decoder_bias(0.0, graphed=True)
    hook = model.decoder.bias.register_hook(lambda grad: grad * math.inf)
    before = [p.detach().clone() for p in model.parameters()]
    step(x, y)
    hook.remove()
    _, healthy = make_step(graphed=True)
    assert train(healthy, x, y)  # the same window, without the hook, trains
    step(x, y)
    with pytest.raises(Diverged) as raised:
        step.drain()
    assert raised.value.windows_after == 1 and not math.isfinite(raised.value.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
