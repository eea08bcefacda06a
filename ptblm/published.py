"""The published numbers a run is compared with (REFERENCE.md), and what each shipped config
costs: its parameters and how long it takes to train.

This is the one place in the code that holds them; the run summary, metrics.json and
`ptblm config list` read them from here.
"""

from __future__ import annotations

from ptblm.config import TUTORIAL_FIELDS, Config, load_config

# The tutorial's table (REFERENCE.md, "Published results"): perplexity after max_max_epoch epochs.
PUBLISHED = {
    "small": {"train": 37.99, "valid": 121.39, "test": 115.91},
    "medium": {"train": 48.45, "valid": 86.16, "test": 82.07},
    "large": {"train": 37.87, "valid": 82.62, "test": 78.29},
}

PTB_TRAIN_TOKENS = 929_589

# Training words/s, fp32, used to estimate a run's time. CPU: ptblm measured on this project's
# 2-core AMD EPYC VM (small: the full run in the README; medium, large: `make bench`). GPU: the
# tutorial's cuDNN mode on one Titan X (REFERENCE.md); ptblm itself has not been measured on a GPU.
WORDS_PER_SECOND = {
    "cpu": {"small": 5_500, "medium": 1_800, "large": 330},
    "gpu": {"small": 49_000, "medium": 24_200, "large": 10_500},
}


def published_row(config: Config) -> tuple[str, dict[str, float]] | None:
    """The published (name, row) whose config has the same tutorial fields, if any."""
    for name, row in PUBLISHED.items():
        shipped = load_config(name)
        if all(getattr(config, key) == getattr(shipped, key) for key in TUTORIAL_FIELDS):
            return name, row
    return None


def parameter_count(config: Config) -> int:
    """The model's parameters (the frozen zero bias_hh included), by arithmetic, so that
    `ptblm config list` need not import torch."""
    hidden, vocab = config.hidden_size, config.vocab_size
    lstm_layer = 4 * hidden * (hidden + hidden) + 2 * 4 * hidden  # weights ih, hh; biases ih, hh
    return vocab * hidden + config.num_layers * lstm_layer + hidden * vocab + vocab


def expected_minutes(name: str, config: Config, device: str) -> float | None:
    """Training time of a full PTB run of shipped config `name` on "cpu" or "gpu" (None when
    there is no figure for it)."""
    speed = WORDS_PER_SECOND[device].get(name)
    if speed is None:
        return None
    return config.max_max_epoch * PTB_TRAIN_TOKENS / speed / 60
