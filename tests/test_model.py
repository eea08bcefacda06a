import math

import pytest
import torch
from torch import nn

from ptblm.config import load_config
from ptblm.model import LSTMLanguageModel, detach_state, perplexity, window_loss


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
    torch.manual_seed(0)
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


def twin_models(**options):
    """A fused and a reference model with the same weights."""
    torch.manual_seed(0)
    fused = LSTMLanguageModel(40, 12, 2, 1.0, 0.3, cell="fused", **options)
    reference = LSTMLanguageModel(40, 12, 2, 1.0, 0.3, cell="reference", **options)
    reference.load_state_dict(fused.state_dict())
    return fused, reference


def test_the_reference_cell_loads_the_fused_weights_and_gives_the_same_logits():
    fused, reference = twin_models()
    assert fused.state_dict().keys() == reference.state_dict().keys()
    ids = torch.randint(40, (3, 9), generator=torch.Generator().manual_seed(1))
    for model in (fused, reference):
        model.eval()
    ours, (h, c) = reference(ids, reference.initial_state(3))
    theirs, (h2, c2) = fused(ids, fused.initial_state(3))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h2, rtol=1e-5, atol=1e-6)


def test_forget_bias_is_a_frozen_constant_on_the_forget_gate_in_both_cells():
    fused, reference = twin_models(forget_bias=1.0)
    for name in ("lstm.bias_hh_l0", "lstm.bias_hh_l1"):
        bias = dict(fused.named_parameters())[name]
        assert not bias.requires_grad
        assert torch.equal(bias, torch.cat([torch.zeros(12), torch.ones(12), torch.zeros(24)]))
    ids = torch.randint(40, (2, 5), generator=torch.Generator().manual_seed(2))
    fused.eval(), reference.eval()
    with_bias, _ = fused(ids, fused.initial_state(2))
    torch.testing.assert_close(reference(ids, reference.initial_state(2))[0], with_bias)
    torch.manual_seed(0)
    without = LSTMLanguageModel(40, 12, 2, 1.0, 0.3).eval()
    assert not torch.allclose(without(ids, without.initial_state(2))[0], with_bias)


def test_tied_weights_are_one_tensor_initialised_once_and_saved_once(tmp_path):
    torch.manual_seed(0)
    model = LSTMLanguageModel(300, 16, 2, 1.0, 0.1, tie_weights=True)
    assert model.decoder.weight is model.embedding.weight
    assert model.embedding.weight.abs().max() <= 0.1
    names = [name for name, _ in model.named_parameters()]
    assert "decoder.weight" not in names and "embedding.weight" in names
    torch.save(model.state_dict(), tmp_path / "tied.pt")
    torch.manual_seed(0)
    untied = LSTMLanguageModel(300, 16, 2, 1.0, 0.1)
    torch.save(untied.state_dict(), tmp_path / "untied.pt")
    saved_less = (tmp_path / "untied.pt").stat().st_size - (tmp_path / "tied.pt").stat().st_size
    assert saved_less >= 300 * 16 * 4  # the decoder's 300 x 16 floats are not stored twice
    loaded = LSTMLanguageModel(300, 16, 2, 1.0, 0.1, tie_weights=True)
    loaded.load_state_dict(torch.load(tmp_path / "tied.pt", weights_only=True))
    assert loaded.decoder.weight is loaded.embedding.weight


def test_weight_drop_passes_dropped_weights_without_touching_the_parameters(recwarn):
    torch.manual_seed(0)
    model = LSTMLanguageModel(40, 12, 2, 1.0, 0.3, weight_drop=0.5)
    plain = LSTMLanguageModel(40, 12, 2, 1.0, 0.3)
    plain.load_state_dict(model.state_dict())  # the same parameters, the same names
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(40, (3, 6), generator=torch.Generator().manual_seed(3))
    logits, _ = model(ids, model.initial_state(3))
    logits.sum().backward()
    assert model.lstm.weight_hh_l0.grad is not None
    # Entries dropped this window get no gradient; the parameter itself is unchanged.
    assert (model.lstm.weight_hh_l0.grad == 0).float().mean() > 0.3
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
    second, _ = model(ids, model.initial_state(3))
    assert not torch.allclose(logits, second)  # a new mask for the next window
    model.eval(), plain.eval()
    torch.testing.assert_close(
        model(ids, model.initial_state(3))[0], plain(ids, plain.initial_state(3))[0]
    )
    assert not [w for w in recwarn if "contiguous" in str(w.message)]


def test_the_faithful_model_is_bitwise_a_plain_pytorch_model():
    """Defaults leave the tutorial's model bit for bit: 10 windows of small (and of small with
    dropout, so the dropout masks' random draws count too) equal a plain nn.Embedding / nn.LSTM /
    nn.Linear model written here, trained with the textbook loop."""
    import contextlib

    from ptblm.step import EagerStep

    generator = torch.Generator().manual_seed(0)
    data = torch.randint(10_000, (20, 10 * 20 + 1), generator=generator)
    for keep_prob in (1.0, 0.5):
        config = load_config("small", [f"keep_prob={keep_prob}"])
        torch.manual_seed(0)
        model = LSTMLanguageModel.from_config(config)
        params = [p for p in model.parameters() if p.requires_grad]
        step = EagerStep(model, torch.optim.SGD(params, lr=1.0), config, contextlib.nullcontext())
        step.state = model.initial_state(20)

        torch.manual_seed(0)
        embedding, lstm = (
            nn.Embedding(10_000, 200),
            nn.LSTM(200, 200, 2, batch_first=True, dropout=1 - keep_prob),
        )
        decoder, dropout = nn.Linear(200, 10_000), nn.Dropout(1 - keep_prob)
        named = [
            *embedding.named_parameters(),
            *(("lstm." + n, p) for n, p in lstm.named_parameters()),
            *decoder.named_parameters(),
        ]
        for name, parameter in named:
            if name.startswith("lstm.bias_hh"):
                nn.init.zeros_(parameter)
                parameter.requires_grad_(False)
            else:
                nn.init.uniform_(parameter, -0.1, 0.1)
        bare = [p for _, p in named if p.requires_grad]
        optimizer = torch.optim.SGD(bare, lr=1.0)
        state = (torch.zeros(2, 20, 200), torch.zeros(2, 20, 200))

        for i in range(10):  # bitwise: a difference in any window stays in the weights after it
            x, y = data[:, i * 20 : (i + 1) * 20], data[:, i * 20 + 1 : (i + 1) * 20 + 1]
            torch.manual_seed(100 + i)
            step(x, y)
            torch.manual_seed(100 + i)
            output, state = lstm(dropout(embedding(x)), state)
            logits = decoder(dropout(output))
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten()) * 20
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(bare, 5.0)
            optimizer.step()
            state = tuple(t.detach() for t in state)
        ours = [p for p in model.parameters()]
        assert len(ours) == len(named)
        for (name, theirs), mine in zip(named, ours):
            assert torch.equal(mine, theirs), f"keep_prob {keep_prob}: {name} differs"


def test_perplexity_edge_cases():
    assert perplexity(2 * math.log(3), 2) == pytest.approx(3.0)
    assert perplexity(1e6, 1) == math.inf
    assert math.isnan(perplexity(0.0, 0))
