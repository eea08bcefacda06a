"""A start that has stalled: the top LSTM layer gone silent, the model left predicting word
frequencies alone (docs/results.md, "large").

The published recipe's first windows are violent: gradient norms of 400-2,000, each clipped to
max_grad_norm at learning rate 1. In large that start saturated the top layer's gates in 4 of 12
seeds on an H200 and in 4 of 12 on a CPU: its carried cell state grew without bound (|c| into the
hundreds or thousands, where the runs that trained stayed under 60) while 97-100% of its units
put out about 0 (|h| < 0.01; about half in the runs that trained, 96% at a moment of the most
violent start that recovered). The decoder then sees nothing and learns word frequencies; on the
H200, seed 0 stayed so until epoch 11 of 55.

Both figures come from the carried state at each log point (TensorBoard: train/top_silent,
train/top_max_cell; under torchrun, of rank 0's rows). A warning, once, when both have been past
their limits at every log point for STALL_WINDOWS windows: a start can stall for a moment and
recover (one CPU seed did, within 20 windows), where the stalls that lasted had not ended 150
windows later. The run's state keeps the streak and the warning, so that summary.json and
`ptblm runs` show a stalled run (and one that has recovered since) to whoever did not watch its
output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ptblm.run_state import RunState

SILENT_H = 0.01  # |h| under this: the unit puts out nothing
SILENT_SHARE = 0.95  # of the top layer's units (rows x units)
MAX_CELL = 100.0  # largest |c| of the top layer
STALL_WINDOWS = 100  # stalled at every log point for this many training windows


def top_layer_figures(state: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """(share of the top layer's units with |h| < SILENT_H, largest |c| there) of the carried
    state (h, c), each (num_layers, batch, hidden). One host sync."""
    h, c = state[0][-1], state[1][-1]
    silent = (h.abs() < SILENT_H).float().mean()
    share, max_cell = torch.stack([silent, c.abs().max().float()]).tolist()
    return share, max_cell


def follow(run: RunState, share: float, max_cell: float) -> bool:
    """Follow one log point's figures at `run.global_step` in the run's state (a resumed run
    goes on counting where it stopped); True when to warn: once a run."""
    if share < SILENT_SHARE or max_cell < MAX_CELL:
        run.stalled_since = None
        return False
    if run.stalled_since is None:
        run.stalled_since = run.global_step
    if run.stall_warned_at is not None or run.global_step - run.stalled_since < STALL_WINDOWS:
        return False
    run.stall_warned_at = run.global_step
    return True


def message(share: float, max_cell: float) -> str:
    return (
        f"training has stalled: {share:.1%} of the top LSTM layer's units put out about 0 and "
        f"its cell state has grown to |c| = {max_cell:,.0f}, so the model predicts word "
        "frequencies alone (the published large recipe's violent start did this with 4 of 12 "
        "seeds on an H200 and 4 of 12 on a CPU; on the H200, seed 0 stayed stalled until epoch "
        "11 of 55, see docs/results.md). "
        "To lose no more time, stop it (Ctrl-C) and train again with another --seed."
    )
