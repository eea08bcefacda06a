import math

import pytest
import torch
from torch import nn

from ptblm.config import load_config
from ptblm.model import LSTMLanguageModel, detach_state, window_loss


def test_shapes_and_architecture_follow_the_config():
    config = load_config(
        "small", ["vocab_size=50", "hidden_size=8", "num_layers=3", "keep_prob=0.5"]
    )
    model = LSTMLanguageModel.from_config(config)
    assert model.embedding.weight.shape == (50, 8)
    assert model.decoder.weight.shape == (50, 8)
    assert model.embedding.weight.data_ptr() != model.decoder.weight.data_ptr()  # not tied
    assert model.lstm.num_layers == 3 and model.lstm.dropout == pytest.approx(0.5)
    state = model.initial_state(4)
    assert state[0].shape == state[1].shape == (3, 4, 8)
    logits, (h, c) = model(torch.randint(50, (4, 6)), state)
    assert logits.shape == (4, 6, 50)
    assert h.shape == c.shape == (3, 4, 8)


def test_every_parameter_starts_uniform_within_init_scale_and_one_bias_per_gate():
    torch.manual_seed(0)  # the std check below is statistics: seeded, so it cannot flake
    model = LSTMLanguageModel(
        vocab_size=300, hidden_size=64, num_layers=2, keep_prob=1.0, init_scale=0.05
    )
    for name, parameter in model.named_parameters():
        if name.startswith("lstm.bias_hh"):
            # The tutorial's cell has one bias per gate: b_ih plays it, b_hh stays zero and frozen.
            assert torch.count_nonzero(parameter) == 0 and not parameter.requires_grad
            continue
        assert parameter.requires_grad
        assert parameter.abs().max() <= 0.05
        # uniform(-a, a) has standard deviation a / sqrt(3); a different init would not. The
        # smallest tensor (a 256-bias) has a sampling error of ~4.5%: 10% is > 2 sigma.
        assert parameter.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.1), name
        assert parameter.min() < -0.04 and parameter.max() > 0.04, name  # spread, not shrunk


def test_dropout_only_in_training_mode():
    model = LSTMLanguageModel(
        vocab_size=30, hidden_size=16, num_layers=2, keep_prob=0.5, init_scale=0.1
    )
    ids = torch.randint(30, (3, 5))
    model.eval()
    first, _ = model(ids, model.initial_state(3))
    second, _ = model(ids, model.initial_state(3))
    assert torch.equal(first, second)
    model.train()
    torch.manual_seed(0)
    noisy, _ = model(ids, model.initial_state(3))
    assert not torch.allclose(noisy, first)


def test_window_loss_is_the_sum_over_time_of_the_batch_mean_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11)
    targets = torch.randint(11, (4, 7))
    # The tutorial: sequence_loss averaged across the batch, summed across time.
    expected = sum(
        nn.functional.cross_entropy(logits[:, t], targets[:, t], reduction="mean") for t in range(7)
    )
    assert window_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)
    # ... which is num_steps times the mean-over-tokens loss (the common trap).
    mean = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert window_loss(logits, targets).item() == pytest.approx(7 * mean.item(), rel=1e-6)


def test_detach_state_keeps_values_and_cuts_the_graph():
    model = LSTMLanguageModel(
        vocab_size=10, hidden_size=4, num_layers=1, keep_prob=1.0, init_scale=0.1
    )
    _, state = model(torch.randint(10, (2, 3)), model.initial_state(2))
    assert state[0].grad_fn is not None
    detached = detach_state(state)
    for before, after in zip(state, detached):
        assert after.grad_fn is None and not after.requires_grad
        assert torch.equal(before, after)
        assert after.dtype == torch.float32


def test_parameter_count_arithmetic_matches_the_built_model():
    from ptblm.published import parameter_count

    for name in ("small", "medium", "test"):
        config = load_config(name)
        model = LSTMLanguageModel.from_config(config)
        assert parameter_count(config) == sum(p.numel() for p in model.parameters()), name
