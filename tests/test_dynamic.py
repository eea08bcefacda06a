"""Dynamic evaluation: Krause's SGD step with decay, scored before the weights see a token."""

import pytest
import torch

from ptblm.dynamic import DynamicEvaluation, DynamicSettings
from ptblm.errors import ConfigError
from ptblm.model import LSTMLanguageModel


def test_one_update_is_sgd_with_a_pull_to_the_trained_weights_and_frozen_stays_frozen():
    torch.manual_seed(0)
    model = LSTMLanguageModel(20, 6, 2, 1.0, 0.1)
    learner = DynamicEvaluation(model, DynamicSettings(lr=0.5, decay=0.25))
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = torch.randint(20, (1, 8))
    logits, _ = model(ids[:, :-1], None)
    loss = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:])
    named = [name for name, p in model.named_parameters() if p.requires_grad]
    gradients = dict(zip(named, torch.autograd.grad(loss, learner.parameters, retain_graph=True)))
    learner.update(loss)  # the first step starts at the trained weights: the pull is zero
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, trained[name])  # bias_hh stays frozen
            continue
        torch.testing.assert_close(p, trained[name] - 0.5 * gradients[name])
    moved = {name: p.detach().clone() for name, p in model.named_parameters()}
    logits, _ = model(ids[:, :-1], None)
    loss = torch.nn.functional.cross_entropy(logits[0], ids[0, 1:])
    grads = torch.autograd.grad(loss, learner.parameters, retain_graph=True)
    learner.update(loss)
    for name, gradient in zip(named, grads):
        expected = moved[name] - 0.5 * gradient + 0.25 * (trained[name] - moved[name])
        torch.testing.assert_close(dict(model.named_parameters())[name], expected)
    learner.reset()
    assert all(torch.equal(p, trained[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"lr": -0.1}, "--dynamic-lr -0.1"),
        ({"decay": -0.5}, "--dynamic-decay -0.5"),
        ({"decay": 2.0}, "--dynamic-decay 2.0"),
        ({"segment": 0}, "--dynamic-segment 0"),
        ({"lr": float("inf")}, "--dynamic-lr inf"),
    ],
)
def test_bad_dynamic_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DynamicSettings(**settings)
