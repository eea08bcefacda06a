"""The continuous cache against the formula of Grave et al. 2017, written out per token here."""

import math

import pytest
import torch

from ptblm.cache import CacheSettings, ContinuousCache
from ptblm.errors import ConfigError


def per_token_reference(hidden, model_logprob, targets, window, theta, lam):
    """For position t: the pairs (h_i, targets[i]) of the previous min(window, t) positions,
    p_cache(w) = sum of softmax(theta * h_t . h_i) over the pairs whose word is w."""
    out = []
    for t in range(len(targets)):
        p_model = math.exp(model_logprob[t])
        pairs = list(range(max(0, t - window), t))
        if not pairs:
            out.append(math.log(p_model))
            continue
        scores = [theta * float(hidden[t] @ hidden[i]) for i in pairs]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        p_cache = sum(w for w, i in zip(weights, pairs) if targets[i] == targets[t]) / total
        out.append(math.log((1 - lam) * p_model + lam * p_cache))
    return out


@pytest.mark.parametrize("chunks", [[60], [4, 13, 1, 42], [1] * 60], ids=["one", "mixed", "ones"])
def test_the_cache_is_the_papers_formula_across_window_boundaries(chunks):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(60, 5, generator=generator, dtype=torch.float64)
    targets = torch.randint(7, (60,), generator=generator)
    model_logprob = torch.log_softmax(torch.randn(60, 7, generator=generator), 1)[
        torch.arange(60), targets
    ].double()
    expected = per_token_reference(hidden, model_logprob.tolist(), targets.tolist(), 9, 0.7, 0.3)
    cache = ContinuousCache(CacheSettings(window=9, theta=0.7, lam=0.3))
    got, start = [], 0
    for size in chunks:
        end = start + size
        got += cache.mix(hidden[start:end], model_logprob[start:end], targets[start:end]).tolist()
        start = end
    assert got == pytest.approx(expected, rel=1e-9)
    assert cache.keys.size(0) == 9  # no more than the window is kept


def test_lambda_zero_is_the_model_alone():
    hidden = torch.randn(10, 3, dtype=torch.float64)
    model_logprob = torch.full((10,), -2.0, dtype=torch.float64)
    mixed = ContinuousCache(CacheSettings(lam=0.0)).mix(
        hidden, model_logprob, torch.zeros(10).long()
    )
    assert torch.equal(mixed, model_logprob)


@pytest.mark.parametrize(
    "settings, fragment",
    [
        ({"window": 0}, "--cache-window 0"),
        ({"lam": 1.5}, "--cache-lambda 1.5"),
        ({"lam": -0.1}, "--cache-lambda -0.1"),
        ({"theta": -1.0}, "--cache-theta -1.0"),
        ({"theta": float("nan")}, "--cache-theta nan"),
    ],
)
def test_bad_cache_settings_are_refused(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        CacheSettings(**settings)
