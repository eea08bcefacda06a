"""A diverged window: the step's signal (raised before any update, step.py) and the message the
user reads (where it happened, which checkpoint is intact, what to change).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ptblm.errors import DivergenceError

if TYPE_CHECKING:
    from ptblm.config import Config
    from ptblm.run_state import RunState

# A huge learning rate saturates the LSTM's gates before anything becomes NaN, so a per-token loss
# far beyond the untrained model's log(vocab_size) counts as divergence too.
DIVERGED_LOSS_FACTOR = 10


class Diverged(Exception):  # noqa: N818 (a signal to the loop, which words the user's message)
    """The window's loss or gradient norm is not finite or over the bound; no update was made.

    `windows_after`: how many windows were queued after the diverged one (GraphStep only; they
    made no update either).
    """

    def __init__(self, mean_nll: float, grad_norm: float, windows_after: int = 0):
        super().__init__(mean_nll, grad_norm)
        self.mean_nll, self.grad_norm = mean_nll, grad_norm
        self.windows_after = windows_after


def divergence_error(
    diverged: Diverged,
    run: RunState,
    learning_rate: float,
    config: Config,
    saved: Path | None,
) -> DivergenceError:
    """The error for the window after `run.global_step`; `saved`: the checkpoint a resume would
    take (None: none was saved)."""
    kept = f"The last checkpoint, {saved}, is intact." if saved else "No checkpoint was saved."
    # The first window's loss and gradient come from the initial weights alone (no update has
    # been made), any later one's from the updates.
    if run.global_step == 0:
        fix = "Lower init_scale (--set init_scale=...)"
    else:
        decay = ", weight_decay" if config.weight_decay else ""
        fix = f"Lower learning_rate{decay} or max_grad_norm (--set learning_rate=...)"
    fix += ", or use --precision fp32." if config.precision != "fp32" else "."
    return DivergenceError(
        f"training diverged at step {run.global_step + 1} (epoch {run.epoch + 1}, window "
        f"{run.window + 1}, learning rate {learning_rate:g}): loss per token "
        f"{diverged.mean_nll:g}, gradient norm {diverged.grad_norm:g}. {kept} {fix}"
    )
