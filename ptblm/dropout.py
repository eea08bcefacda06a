"""The dropouts of the model family, each a new mask per window (one forward call):

- standard (Zaremba et al.): a fresh mask for every element, so a new one at every time step;
- variational (Gal & Ghahramani 2016): one mask per row and feature, the same at every time step;
- embedding dropout: whole word types dropped from the embedding matrix for the window;
- weight drop (DropConnect on weight_hh, as AWD-LSTM): one mask on the recurrent weights.

Kept values are scaled by 1 / (1 - p), so nothing changes in evaluation mode, where none applies.
"""

from __future__ import annotations

import torch
from torch import nn


def bernoulli_mask(shape, p: float, like: torch.Tensor) -> torch.Tensor:
    """0 with probability p, else 1 / (1 - p); dtype and device of `like`."""
    return torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - p) / (1 - p)


class SequenceDropout(nn.Module):
    """Dropout on a (batch, steps, features) tensor: `standard` or `variational`."""

    def __init__(self, p: float, mode: str = "standard"):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "standard":  # exactly nn.Dropout
            return nn.functional.dropout(x, self.p, self.training)
        if not self.training or not self.p:
            return x
        return x * bernoulli_mask((x.size(0), 1, x.size(2)), self.p, x)

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


def drop_rows(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Embedding dropout: each row (word type) of `weight` zeroed with probability p."""
    return weight * bernoulli_mask((weight.size(0), 1), p, weight)


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """Weight drop: each entry of `weight` zeroed with probability p."""
    return weight * bernoulli_mask(weight.shape, p, weight)
