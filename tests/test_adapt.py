"""Scoring a stream with the cache and dynamic evaluation, on tiny models."""

import pytest
import torch
from helpers import tiny_model

from ptblm.adapt import adapted_perplexity, stream_logprobs
from ptblm.cache import CacheSettings
from ptblm.dynamic import DynamicSettings
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel, perplexity


def test_plain_and_lr_zero_dynamic_evaluation_are_exactly_the_test_protocol():
    model = tiny_model()
    ids = torch.randint(30, (503,), generator=torch.Generator().manual_seed(1))
    nll, tokens = evaluate(model, ids)
    plain = stream_logprobs(model, ids)
    still = stream_logprobs(model, ids, dynamic=DynamicSettings(lr=0.0, decay=0.0, segment=7))
    assert plain.numel() == still.numel() == tokens == 502
    assert -plain.sum().item() == pytest.approx(nll, rel=1e-6)  # fp32 sums in another order
    # Windows of 7 instead of 500: the same sums in fp32, in another order.
    torch.testing.assert_close(still, plain, rtol=1e-5, atol=1e-6)
    assert perplexity(-still.sum().item(), 502) == pytest.approx(perplexity(nll, 502), rel=1e-6)


def test_the_first_segment_is_scored_before_any_update_and_the_weights_come_back():
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(30, (200,), generator=torch.Generator().manual_seed(2))
    plain = stream_logprobs(model, ids)
    adapted = stream_logprobs(model, ids, dynamic=DynamicSettings(lr=5.0, segment=10))
    torch.testing.assert_close(adapted[:10], plain[:10], rtol=1e-6, atol=1e-9)
    assert not torch.allclose(adapted[10:20], plain[10:20])  # the step did change the model
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_every_segment_holds_n_predictions_across_the_windows_a_stream_is_read_in():
    """Segments of 30 over a stream read in windows: the windows of 500 cut the 17th segment to
    20 predictions, and every later one was shifted. Recomputed here segment by segment: score
    with the current weights, then one SGD step on the segment's mean NLL (decay 0)."""
    model = tiny_model().eval()
    ids = torch.randint(30, (1101,), generator=torch.Generator().manual_seed(4))
    adapted = stream_logprobs(model, ids, dynamic=DynamicSettings(lr=0.5, decay=0.0, segment=30))
    learning = [p for p in model.parameters() if p.requires_grad]
    state, expected = model.initial_state(1), []
    for start in range(0, 1100, 30):
        end = min(start + 30, 1100)
        x, y = ids[None, start:end], ids[None, start + 1 : end + 1]
        logits, state = model(x, state)
        logprob = torch.log_softmax(logits[0], -1).gather(-1, y[0, :, None])[:, 0]
        expected.append(logprob.detach().double())
        state = tuple(s.detach() for s in state)
        gradients = torch.autograd.grad(-logprob.mean(), learning)
        with torch.no_grad():
            for parameter, gradient in zip(learning, gradients, strict=True):
                parameter -= 0.5 * gradient
    torch.testing.assert_close(adapted, torch.cat(expected), rtol=1e-4, atol=1e-5)


def test_a_repeated_sentence_is_far_more_predictable_with_either():
    """Weights of a larger scale than training starts from, so that the untrained LSTM's states
    tell the words apart; 17 distinct words, each with one successor."""
    torch.manual_seed(0)
    model = LSTMLanguageModel(30, 12, 2, 1.0, 1.0)
    sentence = torch.randperm(30, generator=torch.Generator().manual_seed(3))[:17]
    ids = sentence.repeat(60)
    cache, dynamic = CacheSettings(window=100, theta=10.0, lam=0.9), DynamicSettings(lr=3.0)
    plain = adapted_perplexity(model, ids)
    assert adapted_perplexity(model, ids, cache=cache) < plain / 3
    assert adapted_perplexity(model, ids, dynamic=dynamic) < plain / 3
    assert adapted_perplexity(model, ids, cache=cache, dynamic=dynamic) < plain / 3
