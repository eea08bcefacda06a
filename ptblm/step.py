"""One training step on one window: the hot path.

    logits, state = model(x, state)          state carried from the previous window
    loss = window_loss(logits, y)            sum over steps of the batch-mean cross-entropy
    loss.backward()                          (AMP on CUDA: scaled, unscaled before clipping)
    clip all gradients to global norm max_grad_norm
    guard: a diverged window never reaches the weights
    SGD update at the epoch's learning rate
    state = state.detach()                   values carried, gradients cut at the window edge

Two steps with one interface: `step(x, y)` trains one window, `step.drain()` returns the
(mean per-token NLL, gradient norm before clipping) of every window since the last drain, in
order, and `step.state` is the carried (h, c).

- EagerStep, on every device: reads the pair back after each window (its one HOST SYNC) and
  raises Diverged before the update.
- GraphStep, on CUDA (fp32, one process): the whole step captured once in a CUDA graph and
  replayed per window, with no host sync. The guard runs on the device: a diverged window and
  every window after it leave the weights untouched, and drain() (once per log interval) raises
  Diverged for the first such window.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ptblm.config import Config
from ptblm.distributed import SINGLE_PROCESS, Distributed
from ptblm.divergence import DIVERGED_LOSS_FACTOR, Diverged
from ptblm.model import State, detach_state, window_loss
from ptblm.runtime import autocast_context, make_scaler


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
        self.pending: list[tuple[float, float]] = []

    def drain(self) -> list[tuple[float, float]]:
        pending, self.pending = self.pending, []
        return pending

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y: (rows, num_steps) int64. Trains the window, keeping its mean per-token NLL over
        all ranks and its gradient norm before clipping for `drain`; raises Diverged, weights
        untouched."""
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
        # Under AMP on CUDA a non-finite gradient is an overflow the GradScaler skips, not
        # divergence.
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
        self.pending.append((mean_nll, norm))


class GraphStep:
    """EagerStep's update (fp32, no GradScaler, one process) as one CUDA graph per window.

    At batch 20 a window is hundreds of small kernels and the host, not the GPU, sets the pace;
    replaying a captured graph launches them all at once. The first WARMUP windows run the same
    code eagerly (on a side stream, so that cuBLAS/cuDNN handles and the dropout state are made
    outside the capture), then the step is captured on the next window. Static buffers hold x,
    y, the carried (h, c), the learning rate (a device tensor, so a new epoch's rate needs no new
    capture) and a (CAPACITY, 3) table of (window loss, gradient norm, update made) that drain()
    reads back in one transfer.
    """

    WARMUP = 3
    CAPACITY = 256  # windows between two drains at most (the loop drains at every log point, 50 windows at most)

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, config: Config):
        device = next(model.parameters()).device
        self.model = model
        self.optimizer = optimizer
        self.parameters = [p for group in optimizer.param_groups for p in group["params"]]
        self.weight_decay = optimizer.param_groups[0]["weight_decay"]
        self.max_grad_norm = config.max_grad_norm
        self.loss_bound = DIVERGED_LOSS_FACTOR * math.log(config.vocab_size) * config.num_steps
        self.num_steps = config.num_steps
        self.scaler = None
        rows = config.batch_size
        shape = (config.num_layers, rows, config.hidden_size)
        self.x = torch.zeros(rows, config.num_steps, dtype=torch.long, device=device)
        self.y = torch.zeros_like(self.x)
        self.h = torch.zeros(shape, device=device)
        self.c = torch.zeros(shape, device=device)
        self.neg_lr = torch.zeros((), device=device)
        self.lr: float | None = None
        self.table = torch.zeros(self.CAPACITY, 3, device=device)
        self.row = torch.zeros(1, dtype=torch.long, device=device)  # the table's next row
        self.stopped = torch.zeros((), dtype=torch.bool, device=device)  # sticky divergence
        self.queued = 0  # windows since the last drain, counted on the host
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmed = 0
        self.refused = False

    @property
    def state(self) -> State:
        return self.h.clone(), self.c.clone()

    @state.setter
    def state(self, state: State | None) -> None:
        if state is None:
            self.h.zero_(), self.c.zero_()
        else:
            self.h.copy_(state[0]), self.c.copy_(state[1])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y: (rows, num_steps) int64 on the device. Queues the window; no host sync."""
        if self.queued == self.CAPACITY:
            raise RuntimeError("GraphStep: drain() at least every CAPACITY windows")
        lr = self.optimizer.param_groups[0]["lr"]
        if lr != self.lr:
            self.neg_lr.fill_(-lr)
            self.lr = lr
        self.x.copy_(x)
        self.y.copy_(y)
        if self.graph is not None:
            self.graph.replay()
        elif self.x.is_cuda and self.warmed >= self.WARMUP and not self.refused:
            self.capture()
        elif self.x.is_cuda:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.window()
            torch.cuda.current_stream().wait_stream(side)
            self.warmed += 1
        else:  # the CPU: the same step, uncaptured (what the tests check in CI)
            self.window()
        self.queued += 1

    def capture(self) -> None:
        """Capture the step and replay it for this window; where the capture is refused, warn
        and run the same step uncaptured from now on."""
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.window()
        except RuntimeError as error:
            warnings.warn(
                f"CUDA graph capture refused ({str(error).splitlines()[0][:200]}); training "
                f"continues without it (--set cuda_graph=false silences this)",
                stacklevel=3,
            )
            self.refused = True
            self.window()  # the capture ran nothing, and may have left the gradients half made
            return
        self.graph = graph
        graph.replay()  # capturing ran nothing

    def window(self) -> None:
        """The step, device-side only: what the graph holds."""
        for p in self.parameters:
            p.grad = None  # inside the capture, the backward allocates them in the graph's pool
        logits, (h, c) = self.model(self.x, (self.h, self.c))
        loss = window_loss(logits, self.y)
        loss.backward()
        grads = [p.grad for p in self.parameters]
        grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm, foreach=True)
        loss = loss.detach()
        healthy = torch.isfinite(loss) & (loss <= self.loss_bound) & torch.isfinite(grad_norm)
        update = healthy & ~self.stopped
        self.stopped.logical_or_(~healthy)
        with torch.no_grad():
            if self.weight_decay:
                grads = torch._foreach_add(grads, self.parameters, alpha=self.weight_decay)
            zero = torch.zeros((), device=loss.device)
            steps = [torch.where(update, g, zero) for g in grads]  # NaN * 0 would be NaN
            torch._foreach_mul_(steps, self.neg_lr)
            torch._foreach_add_(self.parameters, steps)
            values = torch.stack([loss, grad_norm.float(), update.float()])
            self.table.index_copy_(0, self.row, values[None])
            self.row.add_(1)
            self.h.copy_(h)
            self.c.copy_(c)

    def drain(self) -> list[tuple[float, float]]:
        """(mean per-token NLL, gradient norm) of each window queued since the last drain.
        Raises Diverged for the first window that made no update."""
        if not self.queued:
            return []
        # HOST SYNC: the one read-back, once per log interval.
        rows = self.table[: self.queued].tolist()
        queued, self.queued = self.queued, 0
        self.row.zero_()
        for index, (loss, grad_norm, updated) in enumerate(rows):
            if not updated:
                raise Diverged(loss / self.num_steps, grad_norm, queued - index - 1)
        return [(loss / self.num_steps, grad_norm) for loss, grad_norm, _ in rows]


def make_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, config: Config, dist: Distributed
) -> EagerStep | GraphStep:
    """The step for this run: the same update either way; the graph (CUDA, fp32, one process)
    only removes the host from the window's pace. Under torchrun the model is wrapped in DDP
    and each rank draws its own dropout masks for its own rows."""
    device = next(model.parameters()).device
    scaler = make_scaler(config.precision, device)
    if device.type == "cuda" and config.cuda_graph and scaler is None and not dist.enabled:
        return GraphStep(model, optimizer, config)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        torch.manual_seed(config.seed + dist.rank)
        model = DistributedDataParallel(model)
    autocast = autocast_context(config.precision, device)
    return EagerStep(model, optimizer, config, autocast, scaler, dist)
