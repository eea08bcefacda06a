"""The continuous cache (Grave, Joulin & Usunier 2017, "Improving Neural Language Models with a
Continuous Cache"): recent words come back, so mix a distribution over the words that followed
the recent hidden states into the model's prediction.

For the prediction made from the top layer's output h_t (after reading token t, predicting token
t+1), the cache holds the pairs (h_i, token i+1) of the previous min(window, t) positions i < t
of the same stream, across window boundaries:

    p_cache(w) = sum over the pairs (h_i, w_i) with w_i = w of softmax_i(theta * h_t . h_i)
    p(w)       = (1 - lambda) * p_model(w) + lambda * p_cache(w)      (p_model alone while empty)

Raw dot products, as the paper. Only the target's probability enters the perplexity, so `mix`
computes p(target) for a whole window of positions at once: a (positions x keys) matrix of dot
products, masked to each position's band of at most `window` earlier keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ptblm.errors import ConfigError, quote

WINDOW_MAX = 1_000_000  # pairs: more than any PTB split has; 12 GB of float64 keys for large


@dataclass(frozen=True)
class CacheSettings:
    window: int = 500  # pairs kept (positions looked back)
    theta: float = 0.3  # the dot products' scale ("flatness" of the cache's softmax)
    lam: float = 0.1  # the cache's weight in the mixture (the paper's lambda)

    def __post_init__(self):
        problems = []
        if (
            isinstance(self.window, bool)
            or not isinstance(self.window, int)
            or not 1 <= self.window <= WINDOW_MAX
        ):
            problems.append(
                f"--cache-window {quote(self.window)}: must be an integer from 1 to {WINDOW_MAX:,}"
            )
        if not self.theta >= 0 or self.theta == float("inf"):
            problems.append(f"--cache-theta {self.theta}: must be a finite number >= 0")
        if not 0 <= self.lam <= 1:
            problems.append(f"--cache-lambda {self.lam}: must lie in [0, 1]")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def as_dict(self) -> dict[str, Any]:
        """Named as the options name them (--cache-window, --cache-theta, --cache-lambda)."""
        return {"window": self.window, "theta": self.theta, "lambda": self.lam}


class ContinuousCache:
    """The pairs (h_i, token i+1) of the last `window` positions of one stream (batch size 1)."""

    def __init__(self, settings: CacheSettings):
        self.settings = settings
        self.keys: torch.Tensor | None = None  # (kept, hidden) float64
        self.words: torch.Tensor | None = None  # (kept,) int64

    def mix(
        self, hidden: torch.Tensor, model_logprob: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """One window of consecutive positions -> log p(target) of the mixture (float64).

        hidden (T, H): the top layer's output at each position; model_logprob (T,): the model's
        log p(target); targets (T,) int64: the token each position predicts. Then adds the
        window's pairs to the cache.
        """
        hidden = hidden.double()
        keys = hidden if self.keys is None else torch.cat([self.keys, hidden])
        words = targets if self.words is None else torch.cat([self.words, targets])
        earlier = keys.size(0) - hidden.size(0)  # pairs from before this window
        query = torch.arange(hidden.size(0), device=hidden.device)[:, None] + earlier
        key = torch.arange(keys.size(0), device=hidden.device)[None, :]
        visible = (key < query) & (key >= query - self.settings.window)
        scores = (self.settings.theta * hidden @ keys.T).masked_fill(~visible, float("-inf"))
        weights = torch.softmax(scores, dim=1).nan_to_num(0.0)  # rows with no pair yet: all 0
        p_cache = (weights * (words[None, :] == targets[:, None])).sum(dim=1)
        p_model = model_logprob.double().exp()
        lam = self.settings.lam
        mixed = torch.where(visible.any(dim=1), (1 - lam) * p_model + lam * p_cache, p_model)
        self.keys = keys[-self.settings.window :]
        self.words = words[-self.settings.window :]
        return mixed.log()
