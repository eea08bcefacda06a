"""`ptblm eval --tune`: the cache's and dynamic evaluation's settings chosen on the validation
split, never on test, over a small grid each (adapt.py applies them).

    cache:    the plain model's pass over valid, made once; each grid point mixes it anew
    dynamic:  each grid point reads valid anew (its updates change the model's pass)
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import torch

from ptblm.adapt import Adaptation, adapted_perplexity
from ptblm.cache import CacheSettings, ContinuousCache
from ptblm.data import windows
from ptblm.dynamic import DynamicSettings
from ptblm.evaluate import TEST_NUM_STEPS
from ptblm.model import LSTMLanguageModel, mean_perplexity

# --tune's grids, searched on the validation split. The cache's covers the values Grave et al.
# report for PTB (windows 100-2000, theta around 0.3, lambda around 0.1); dynamic evaluation's,
# SGD step sizes around the trained model's final scale and Krause's small decays.
CACHE_GRID = {"window": [100, 500, 2000], "theta": [0.1, 0.3, 0.6], "lam": [0.05, 0.1, 0.2]}
DYNAMIC_GRID = {"lr": [0.1, 0.3, 1.0], "decay": [0.0, 0.01]}


def model_passes(model: LSTMLanguageModel, ids: torch.Tensor) -> list:
    """The plain model's (h (T, H), log p(y) (T,), y (T,)) of every window of the stream (T its
    length): what the cache's grid mixes with, made once."""
    device = next(model.parameters()).device
    adaptation = Adaptation(model)
    state, passes = model.initial_state(1, device), []
    try:
        for x, y in windows(ids.to(device)[None, :], TEST_NUM_STEPS, partial=True):
            hidden, logprob, state = adaptation.model_pass(x, y, state)
            passes.append((hidden, logprob, y[0]))
    finally:
        adaptation.close()
    return passes


def mixed(passes: list, cache: CacheSettings) -> torch.Tensor:
    """The cache's log p(y) of the whole stream, (tokens,), from the passes of model_passes."""
    memory = ContinuousCache(cache)
    return torch.cat([memory.mix(h, logprob, y).cpu() for h, logprob, y in passes])


def grid(given: Any, values: dict[str, list]) -> list:
    """`given` with each point of the grid in place of its values (the rest, such as dynamic
    evaluation's segment, as given)."""
    points = itertools.product(*values.values())
    return [dataclasses.replace(given, **dict(zip(values, point))) for point in points]


def tune(
    model: LSTMLanguageModel,
    valid: torch.Tensor,
    cache: CacheSettings | None,
    dynamic: DynamicSettings | None,
) -> tuple[CacheSettings | None, DynamicSettings | None, list[dict[str, Any]]]:
    """The settings with the lowest validation perplexity, searched one technique at a time
    (the cache on the plain model, dynamic evaluation without the cache) over the grid's values
    of each one given, and every grid point's validation perplexity."""
    tried: list[dict[str, Any]] = []

    def best(given, values, run):
        results = []
        for settings in grid(given, values):
            ppl = run(settings)
            tried.append({type(given).__name__: settings.as_dict(), "valid_ppl": ppl})
            results.append((ppl, settings))
        return min(results, key=lambda result: result[0])[1]

    if cache:  # the model's pass does not depend on the cache: made once for the whole grid
        passes = model_passes(model, valid)
        cache = best(cache, CACHE_GRID, lambda s: mean_perplexity(mixed(passes, s)))
    if dynamic:
        dynamic = best(dynamic, DYNAMIC_GRID, lambda s: adapted_perplexity(model, valid, None, s))
    return cache, dynamic, tried


def settle(model, valid, cache, dynamic, tuning):
    """The settings to use (tuned on `valid`, the validation split, with --tune) and the grid's
    results (None without --tune)."""
    if not tuning:
        return cache, dynamic, None
    return tune(model, valid(), cache, dynamic)
