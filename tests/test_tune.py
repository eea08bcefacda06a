"""--tune: the grid point with the lowest validation perplexity, each point scored as
adapt.py scores it."""

import math

import pytest
import torch
from helpers import tiny_model

import ptblm.tune as tune_module
from ptblm.adapt import adapted_perplexity
from ptblm.cache import CacheSettings
from ptblm.dynamic import DynamicSettings
from ptblm.evaluate import evaluate
from ptblm.model import perplexity
from ptblm.tune import tune


def test_tune_chooses_the_lowest_validation_perplexity_of_its_grid(monkeypatch):
    monkeypatch.setattr(
        tune_module, "CACHE_GRID", {"window": [5, 50], "theta": [0.5], "lam": [0.0, 0.4]}
    )
    monkeypatch.setattr(tune_module, "DYNAMIC_GRID", {"lr": [0.0, 3.0], "decay": [0.0]})
    model = tiny_model()
    valid = torch.randint(30, (13,), generator=torch.Generator().manual_seed(4)).repeat(12)
    given = DynamicSettings(segment=7)  # not on the grid: kept
    cache, dynamic, tried = tune(model, valid, CacheSettings(), given)
    assert len(tried) == 4 + 2
    cache_points = [t for t in tried if "CacheSettings" in t]
    best = min(cache_points, key=lambda t: t["valid_ppl"])
    assert best["CacheSettings"] == {
        "window": cache.window,
        "theta": cache.theta,
        "lambda": cache.lam,
    }
    assert cache.lam == 0.4 and dynamic.lr == 3.0  # a repeating text rewards both
    assert dynamic.segment == 7 and all(t["DynamicSettings"]["segment"] == 7 for t in tried[4:])
    for point in tried:
        assert math.isfinite(point["valid_ppl"])
    plain = perplexity(*evaluate(model, valid))
    assert min(t["valid_ppl"] for t in tried) < plain
    # the chosen cache, scored anew on its own: the figure tune reported for it
    assert adapted_perplexity(model, valid, cache=cache) == pytest.approx(best["valid_ppl"])
    worst = max(cache_points, key=lambda t: t["valid_ppl"])["CacheSettings"]
    other = CacheSettings(window=worst["window"], theta=worst["theta"], lam=worst["lambda"])
    assert adapted_perplexity(model, valid, cache=other) > best["valid_ppl"]
