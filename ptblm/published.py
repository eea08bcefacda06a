"""The published numbers a run is compared with (docs/reference.md), and what each shipped config
costs: its parameters and how long it takes to train.

This is the one place in the code that holds them; the run summary, metrics.json and
`ptblm config list` read them from here.
"""

from __future__ import annotations

import functools
from typing import Any

from ptblm.config import TUTORIAL_FIELDS, Config, load_config, model_variant, shipped_configs
from ptblm.memory import parameter_count  # by arithmetic: `config list` imports no torch

# The tutorial's table (docs/reference.md, "The published table"): perplexity after max_max_epoch epochs.
PUBLISHED = {
    "small": {"train": 37.99, "valid": 121.39, "test": 115.91},
    "medium": {"train": 48.45, "valid": 86.16, "test": 82.07},
    "large": {"train": 37.87, "valid": 82.62, "test": 78.29},
}

# The paper's ensembles (docs/reference.md): members averaged -> perplexity, per config and size.
PUBLISHED_ENSEMBLES = {
    "medium": {2: {"valid": 80.6, "test": 77.0}, 5: {"valid": 76.7, "test": 73.3},
               10: {"valid": 75.2, "test": 72.0}},
    "large": {2: {"valid": 76.9, "test": 73.6}, 10: {"valid": 72.8, "test": 69.5},
              38: {"valid": 71.9, "test": 68.7}},
}  # fmt: skip

# Beyond the table (docs/reference.md): the single-model test perplexity each shipped variant is to beat.
TO_BEAT = {
    "medium-tied": 75.96,  # pytorch/examples word_language_model README (2017), --tied 650
    "large-tied": 74.3,  # Press & Wolf 2017, Table 5, "Large + WT"
    "medium-variational-tied": 73.9,  # Inan et al. 2017, VD-LSTM + RE, medium
    "large-variational-tied": 69.0,  # Inan et al. 2017, VD-LSTM + RE, large
}

PTB_TRAIN_TOKENS = 929_589

# Training words/s, fp32, used to estimate a run's time. CPU: ptblm measured on this project's
# 2-core AMD EPYC VMs, between those with AVX-512 and those with AVX2 only (small: the full runs
# in the README, 7.4k with AVX-512 on 2026-11-30, and small + tied weights 5.4k with AVX2 only on
# 11-23, before later speed work; medium: `make bench`, 1.8k with AVX-512 and 1.1-1.2k with AVX2
# only; large: `make bench`, 0.28k, AVX2). GPU: ptblm's graphed step alone on one H200, TF32 off
# (scripts/gpu_check.py's benchmark, 2026-11-29).
WORDS_PER_SECOND = {
    "cpu": {"small": 6_400, "medium": 1_500, "large": 280},
    "gpu": {"small": 339_000, "medium": 150_000, "large": 65_800},
}


@functools.cache
def _shipped(name: str) -> Config:
    """A shipped config, read once (RunState.summary asks at every checkpoint)."""
    return load_config(name)


def published_row(config: Config) -> tuple[str, dict[str, float]] | None:
    """The published (name, row) whose config has the same tutorial fields, if any."""
    for name, row in PUBLISHED.items():
        shipped = _shipped(name)
        if all(getattr(config, key) == getattr(shipped, key) for key in TUTORIAL_FIELDS):
            return name, row
    return None


def published_ensemble(configs: list[Config], split: str) -> dict[str, Any] | None:
    """The paper's averaged row for this many members of one published config, if it has one:
    of Zaremba et al.'s model, so not for members with tied weights, other dropout, a forget
    bias or weight decay (the reference cell is the same model, run step by step)."""
    rows = [published_row(config) for config in configs]
    if rows[0] is None or any(row is None or row[0] != rows[0][0] for row in rows):
        return None
    if any(set(model_variant(config)) - {"cell"} for config in configs):
        return None
    number = PUBLISHED_ENSEMBLES.get(rows[0][0], {}).get(len(configs), {}).get(split)
    if number is None:
        return None
    return {"config": rows[0][0], "members": len(configs), split: number}


def expected_minutes(name: str, config: Config, device: str) -> float | None:
    """Training time of a full PTB run of shipped config `name` on "cpu" or "gpu" (None when
    there is no figure for it)."""
    speed = WORDS_PER_SECOND[device].get(name.split("-")[0])  # a variant: its size's speed
    if speed is None:
        return None
    return config.max_max_epoch * PTB_TRAIN_TOKENS / speed / 60


def shipped_config_table() -> str:
    """`ptblm config list`: each shipped config's size, epochs, parameters, published test
    perplexity, and the expected time of a full run on a CPU and on a GPU."""

    def duration(minutes: float | None) -> str:
        if minutes is None:
            return "-"
        return f"~{minutes:.0f} min" if minutes < 120 else f"~{minutes / 60:.0f} h"

    shipped = shipped_configs()
    width = max((len(name) for name in shipped), default=4)
    lines = [
        f"{'name':{width}} {'size':7} {'epochs':>6} {'params':>7} {'test ppl':>8} "
        f"{'CPU (2 cores)':>13} {'GPU':>8}  file"
    ]
    table_order = [name for name in ("small", "medium", "large", *TO_BEAT) if name in shipped]
    for name in table_order + [name for name in shipped if name not in table_order]:
        path, config = shipped[name], load_config(name)
        cpu, gpu = (expected_minutes(name, config, device) for device in ("cpu", "gpu"))
        published = PUBLISHED.get(name, {}).get("test") or TO_BEAT.get(name)
        note = "  (wants a GPU)" if cpu is not None and cpu > 180 else ""
        lines.append(
            f"{name:{width}} {config.num_layers}x{config.hidden_size:<5} {config.max_max_epoch:>6} "
            f"{parameter_count(config) / 1e6:>6.1f}M {published or '-':>8} {duration(cpu):>13} "
            f"{duration(gpu):>8}  {path}{note}"
        )
    lines.append(
        "test ppl: the published single-model test perplexity (the tutorial's table; for the "
        "variants, the literature's number to beat). Times are for a full PTB run in fp32 at the "
        "size's plain speed (variational and weight-drop variants run slower). CPU: ptblm's "
        "speed on a 2-core AMD EPYC VM, between one with AVX-512 and one with AVX2 only. GPU: "
        "measured by ptblm on one NVIDIA H200 (fp32, TF32 off), training only."
    )
    return "\n".join(lines)
