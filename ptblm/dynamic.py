"""Dynamic evaluation (Krause, Kahembwe, Murray & Renals 2018, "Dynamic Evaluation of Neural
Sequence Models"): the model keeps learning from the text it is scoring.

The stream is cut into segments of N predictions, the state carried across them, dropout off.
Each segment is first scored with the current weights (that score is what counts), then the
weights take one step on that segment's mean per-token NLL, pulled back towards the trained
weights theta_0 (Krause's SGD with decay):

    theta <- theta - lr * grad + decay * (theta_0 - theta)

No token is scored after the weights have seen it. Frozen parameters (the hidden-to-hidden bias)
stay frozen; lr 0 and decay 0 is exactly the plain evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ptblm.config import FLOAT32_MAX
from ptblm.errors import ConfigError, quote
from ptblm.evaluate import TEST_NUM_STEPS


@dataclass(frozen=True)
class DynamicSettings:
    lr: float = 0.3  # step size on the segment's mean per-token NLL (tuned on small)
    decay: float = 0.0  # pull towards the trained weights per segment
    segment: int = 20  # predictions per segment (per update)

    def __post_init__(self):
        problems = []
        if not 0 <= self.lr <= FLOAT32_MAX:  # the weights' type
            problems.append(f"--dynamic-lr {self.lr}: must be a number >= 0 and <= 3.4e+38")
        if not 0 <= self.decay <= 1:
            problems.append(f"--dynamic-decay {self.decay}: must lie in [0, 1]")
        if (
            isinstance(self.segment, bool)
            or not isinstance(self.segment, int)
            or not 1 <= self.segment <= TEST_NUM_STEPS
        ):  # a segment is at most one of the windows a stream is read in
            problems.append(
                f"--dynamic-segment {quote(self.segment)}: must be an integer from 1 to "
                f"{TEST_NUM_STEPS}"
            )
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def as_dict(self) -> dict[str, Any]:
        """Named as the options name them (--dynamic-lr, --dynamic-decay, --dynamic-segment)."""
        return dataclasses.asdict(self)


class DynamicEvaluation:
    """The update of one model; `reset()` puts the trained weights back."""

    def __init__(self, model: nn.Module, settings: DynamicSettings):
        self.settings = settings
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.trained = [p.detach().clone() for p in self.parameters]

    def update(self, segment_nll: torch.Tensor) -> None:
        """One step on the scored segment's mean per-token NLL (a scalar with its graph)."""
        lr, decay = self.settings.lr, self.settings.decay
        gradients = torch.autograd.grad(segment_nll, self.parameters)
        with torch.no_grad():
            for parameter, gradient, trained in zip(self.parameters, gradients, self.trained):
                pull = (trained - parameter).mul_(decay)
                parameter.add_(gradient, alpha=-lr).add_(pull)

    def reset(self) -> None:
        with torch.no_grad():
            for parameter, trained in zip(self.parameters, self.trained):
                parameter.copy_(trained)
