import math

import pytest
import torch

from ptblm.data import batchify
from ptblm.ensemble import average, member_logprobs
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel, perplexity

VOCAB = 30


def model(seed, hidden_size=12):
    torch.manual_seed(seed)
    return LSTMLanguageModel(VOCAB, hidden_size, num_layers=2, keep_prob=1.0, init_scale=0.5).eval()


def stream(length=400, seed=0):
    return torch.randint(VOCAB, (length,), generator=torch.Generator().manual_seed(seed))


def test_the_ensemble_averages_the_members_probabilities():
    """Against averaging the distributions another way: each member over the whole stream in
    one window, softmax in float64, the probability matrices averaged, then the targets read."""
    members, ids = [model(1), model(2), model(3, hidden_size=7)], stream()
    logprobs = member_logprobs(members, batchify(ids, 1), num_steps=7, partial=True)
    assert logprobs.shape == (3, 1, len(ids) - 1)
    with torch.no_grad():
        distributions = [
            torch.softmax(m(ids[None, :-1], None)[0][0].double(), dim=-1) for m in members
        ]
    averaged = torch.stack(distributions).mean(0)
    targets = averaged[torch.arange(len(ids) - 1), ids[1:]]
    expected = math.exp(-targets.log().mean().item())
    assert perplexity(-average(logprobs).sum().item(), len(ids) - 1) == pytest.approx(
        expected, rel=1e-6
    )


def test_each_member_scores_as_it_does_alone():
    members, ids = [model(1), model(2)], stream()
    logprobs = member_logprobs(members, batchify(ids, 4), num_steps=5, partial=False)
    for member, own in zip(members, logprobs, strict=True):
        nll, tokens = evaluate(member, ids, batch_size=4, num_steps=5)  # validation protocol
        assert own.numel() == tokens
        assert -own.sum().item() == pytest.approx(nll, rel=1e-6)


def test_an_ensemble_of_one_model_is_that_model():
    logprobs = member_logprobs([model(1)], batchify(stream(), 1), 50, partial=True)
    assert torch.equal(average(logprobs), logprobs[0])


def test_an_ensemble_is_never_worse_than_its_members_on_average():
    """Jensen: the averaged distribution's log-loss is at most the members' mean log-loss."""
    logprobs = member_logprobs([model(1), model(2)], batchify(stream(), 1), 50, partial=True)
    # Strictly: the members differ (a geometric mean of the members would reach equality).
    assert -average(logprobs).sum() < -logprobs.sum(dim=(1, 2)).mean()
