"""One training step on one window: the hot path.

    logits, state = model(x, state)          state carried from the previous window
    loss = window_loss(logits, y)            sum over steps of the batch-mean cross-entropy
    loss.backward()                          (fp16: scaled, then unscaled before clipping)
    clip all gradients to global norm max_grad_norm
    guard: a diverged window never reaches the weights
    SGD update at the epoch's learning rate
    state = state.detach()                   values carried, gradients cut at the window edge

EagerStep is the step on every device. A CUDA-graph step will sit beside it with the same
interface: `step(x, y) -> (mean per-token NLL, gradient norm)` and a `state` attribute.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptblm.config import Config
from ptblm.distributed import SINGLE_PROCESS, Distributed
from ptblm.model import State, detach_state, window_loss

# A huge learning rate saturates the LSTM's gates before anything becomes NaN, so a per-token loss
# far beyond the untrained model's log(vocab_size) counts as divergence too.
DIVERGED_LOSS_FACTOR = 10


class Diverged(Exception):  # noqa: N818 (a signal to the loop, which words the user's message)
    """The window's loss or gradient norm is not finite or over the bound; no update was made."""

    def __init__(self, mean_nll: float, grad_norm: float):
        super().__init__(mean_nll, grad_norm)
        self.mean_nll, self.grad_norm = mean_nll, grad_norm


class EagerStep:
    """SGD with global-norm clipping on the window objective, state carried across windows.

    `model` computes the logits: the language model, wrapped in DDP under torchrun.
    `state` is the (h, c) carried into the next window; None starts from zeros.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: Config,
        autocast,
        scaler: torch.amp.GradScaler | None = None,
        dist: Distributed = SINGLE_PROCESS,
    ):
        self.model = model
        self.optimizer = optimizer
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.max_grad_norm = config.max_grad_norm
        self.loss_bound = DIVERGED_LOSS_FACTOR * math.log(config.vocab_size)
        self.autocast = autocast
        self.scaler = scaler
        self.dist = dist
        self.state: State | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """x, y: (rows, num_steps) int64 -> the window's mean per-token NLL over all ranks and
        the gradient norm before clipping. Raises Diverged, weights untouched."""
        with self.autocast:
            logits, state = self.model(x, self.state)
            loss = window_loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        # HOST SYNC: the one read-back of a window. The divergence guard needs it before the
        # update. Under torchrun the gradients (so the norm) are equal on every rank and the loss
        # is summed, so all ranks take the same decision.
        window_nll, norm = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        window_nll = self.dist.sum([window_nll], grad_norm.device)[0] / self.dist.world_size
        mean_nll = window_nll / y.size(1)
        # With fp16 a non-finite gradient is an overflow the GradScaler skips, not divergence.
        if not (math.isfinite(mean_nll) and mean_nll <= self.loss_bound) or (
            not math.isfinite(norm) and not self.scaler
        ):
            raise Diverged(mean_nll, norm)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the step if the scaled gradients overflowed
            self.scaler.update()
        else:
            self.optimizer.step()
        self.state = detach_state(state)
        return mean_nll, norm
