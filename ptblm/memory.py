"""Will it fit? A model's size, and the memory free on a device, compared before allocating.

A config or a checkpoint can ask for any hidden_size, and eval for any window: allocated as asked,
hidden_size 1,000,000 is a 14 GB traceback (or the kernel's OOM killer) and `eval --num-steps
1000000` 37 GB of logits. Estimates here are deliberately simple, from the config alone:

    parameters  = V*H (embedding) + L * (8*H*H + 8*H) (LSTM) + H*V + V (decoder; V if tied)
    model       = parameters * 4 bytes (fp32 weights)
    training    = model * 2 (weights, gradients; plain SGD keeps no state)
                  + batch * num_steps * (3*V + 12*L*H) * 4 bytes (one window's activations:
                  logits, log-softmax and its gradient; the LSTM's gates, cells and masks)

and compared with what the device has free: MemAvailable (and a cgroup's limit) on the host,
torch.cuda.mem_get_info on a GPU. Failing to find out is not an error: the check is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ptblm.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ptblm.config import Config

FLOAT_BYTES = 4


def parameter_count(config: Config) -> int:
    """The model's parameters (a tied decoder shares the embedding matrix)."""
    vocab, hidden, layers = config.vocab_size, config.hidden_size, config.num_layers
    decoder = vocab if config.tie_weights else hidden * vocab + vocab
    return vocab * hidden + layers * (8 * hidden * hidden + 8 * hidden) + decoder


def model_bytes(config: Config) -> int:
    return parameter_count(config) * FLOAT_BYTES


def training_bytes(config: Config) -> int:
    window = config.batch_size * config.num_steps
    activations = window * (3 * config.vocab_size + 12 * config.num_layers * config.hidden_size)
    return 2 * model_bytes(config) + activations * FLOAT_BYTES


def describe(config: Config) -> str:
    return (
        f"hidden_size {config.hidden_size}, num_layers {config.num_layers}, vocab_size "
        f"{config.vocab_size} ({parameter_count(config):,} parameters)"
    )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:  # not Linux: all of the physical memory is the best guess there is
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room(folder: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What a container's memory limit (cgroup v2) leaves; MemAvailable shows the host's."""
    try:
        limit = (folder / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((folder / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes free for new tensors on the device, or None when that cannot be found out."""
    kind = device if isinstance(device, str) else device.type
    if kind.startswith("cuda"):
        import torch

        try:
            return torch.cuda.mem_get_info(device)[0]
        except (RuntimeError, AssertionError, ValueError):
            return None
    known = [room for room in (_meminfo_available(), _cgroup_room()) if room is not None]
    return min(known) if known else None


def size(count: int) -> str:
    """Bytes in the unit a person reads: 14.0 GB, 812.3 MB, 96.0 KB."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count / 1e3:.1f} KB"


def check_fits(needed: int, device: torch.device | str, what: str, fix: str) -> None:
    """ConfigError naming both numbers when `needed` bytes exceed what the device has free."""
    free = available_bytes(device)
    if free is None or needed <= free:
        return
    kind = device if isinstance(device, str) else str(device)
    place = "this machine has" if not kind.startswith("cuda") else f"the GPU ({kind}) has"
    raise ConfigError(f"{what} needs about {size(needed)}; {place} {size(free)} available. {fix}")


def check_model_fits(config: Config) -> None:
    """Before a model is built (always on the host first)."""
    check_fits(
        model_bytes(config),
        "cpu",
        f"a model of {describe(config)}",
        "Use a smaller hidden_size, num_layers or vocab_size.",
    )


def check_training_fits(config: Config, device: torch.device | str) -> None:
    """Before a run starts: the weights, their gradients and one window's activations."""
    check_fits(
        training_bytes(config),
        device,
        f"training a model of {describe(config)} with batch_size {config.batch_size} and "
        f"num_steps {config.num_steps}",
        "Use a smaller hidden_size, num_layers, batch_size or num_steps.",
    )
