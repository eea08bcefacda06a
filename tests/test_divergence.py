"""The message a diverged run ends with (the loop's handling of it: test_train.py)."""

from pathlib import Path

import pytest

from ptblm.config import load_config
from ptblm.divergence import Diverged, divergence_error
from ptblm.run_state import RunState


def message(global_step, saved=None, *overrides):
    run = RunState(global_step=global_step, epoch=2, window=6)
    config = load_config("small", list(overrides))
    return str(divergence_error(Diverged(7.5, float("inf")), run, 0.5, config, saved))


def test_it_says_where_with_what_and_that_the_checkpoint_is_intact():
    assert message(40, Path("runs/x/last.pt")) == (
        "training diverged at step 41 (epoch 3, window 7, learning rate 0.5): loss per token "
        "7.5, gradient norm inf. The last checkpoint, runs/x/last.pt, is intact. Lower "
        "learning_rate or max_grad_norm (--set learning_rate=...)."
    )


@pytest.mark.parametrize(
    ("global_step", "overrides", "fix"),
    [
        (0, [], "No checkpoint was saved. Lower init_scale (--set init_scale=...)."),
        (9, ["weight_decay=0.1"], "Lower learning_rate, weight_decay or max_grad_norm"),
        (9, ["precision=bf16"], "(--set learning_rate=...), or use --precision fp32."),
    ],
)
def test_the_fix_names_only_the_settings_that_can_have_caused_it(global_step, overrides, fix):
    said = message(global_step, None, *overrides)
    assert fix in said
    assert ("init_scale" in said) == (global_step == 0)  # no update yet: the initial weights
