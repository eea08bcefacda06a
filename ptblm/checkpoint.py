"""Checkpoints: plain dicts of tensors and plain data, written atomically, read with weights_only.

A checkpoint (best.pt, last.pt) holds:
    format              CHECKPOINT_FORMAT
    model, optimizer    state dicts; scaler: the fp16 GradScaler's state dict (None otherwise)
    config, config_name the Config as a dict, and the name it was started with
    vocab               the words in id order; corpus_dir: a --corpus directory (None for PTB)
    state               the carried LSTM (h, c) of all batch rows for the next window (None at an
                        epoch boundary)
    max_steps           the run's --max-steps limit (None for none)
    world_size          the number of torchrun processes that trained it
    rng                 torch / cuda / numpy / python random states, as tensors and plain data
    rank_rngs           every rank's torch (and cuda) generator state: the dropout masks
    versions            ptblm and torch versions that wrote it
and the fields of ptblm.train.Position: epoch and window (of the next window to train),
global_step, the epoch's training loss so far, the logging interval, best_valid_ppl, best_step,
history, finished, train_seconds, timed_tokens, wall_seconds.

No pickled objects: `torch.load(weights_only=True)` reads it, and a file carrying a pickle
payload is refused instead of executed.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptblm.config import Config, build_config
from ptblm.errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = 1

# mkstemp creates files readable by their owner only; written files get the usual umask instead.
_UMASK = os.umask(0)
os.umask(_UMASK)
REQUIRED_KEYS = ("format", "model", "config", "vocab", "epoch", "window", "global_step")


def atomic_write(path: Path, write) -> None:
    """Call write(file) on a temp file beside `path`, fsync it, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one under `path`, never a part.
    On failure (a full disk, say) the temp file is removed and the old file is untouched.
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, 0o666 & ~_UMASK)
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is.
    try:
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint atomically; CheckpointError (old file intact) if the disk refuses."""
    try:
        atomic_write(path, lambda file: torch.save(checkpoint, file))
    except (OSError, RuntimeError) as error:  # torch's zip writer reports ENOSPC as RuntimeError
        raise CheckpointError(
            f"could not write {path} ({error.strerror or error}); the previous checkpoint there, "
            f"if any, is intact. Free some space or choose another --runs-dir, then resume."
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; CheckpointError says what is wrong with it.

    weights_only=True: only tensors and plain containers are unpickled, so a crafted file
    cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for garbage, truncation and payloads
        raise CheckpointError(
            f"{path} is not a readable ptblm checkpoint ({_load_failure(error)}). Use another "
            f"checkpoint (best.pt or last.pt of a run)."
        ) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is a torch file but not a ptblm checkpoint (keys missing).")
    if not isinstance(checkpoint["format"], int) or checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {checkpoint['format']!r}; this ptblm reads format "
            f"{CHECKPOINT_FORMAT}."
        )
    config = checkpoint_config(checkpoint, path)
    vocab = checkpoint["vocab"]
    if (
        not isinstance(vocab, list)
        or not all(isinstance(word, str) for word in vocab)
        or len(vocab) != config.vocab_size
        or len(set(vocab)) != len(vocab)
    ):
        raise CheckpointError(f"{path}: its vocabulary does not match its config's vocab_size.")
    return checkpoint


def _load_failure(error: Exception) -> str:
    """One line on why torch.load refused a file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line:
            return (
                "it holds pickled Python objects, which a checkpoint never does; they were refused, "
                "not run: " + line.split("error:", 1)[-1].strip()[:150]
            )
    return f"truncated, corrupt or not a torch file: {lines[0][:150] if lines else type(error).__name__}"


def checkpoint_config(checkpoint: dict[str, Any], path: Path) -> Config:
    try:
        return build_config(checkpoint["config"], where=f"{path} (config)")
    except ConfigError as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    except (AttributeError, TypeError):
        raise CheckpointError(f"{path} holds no config mapping.") from None


def vocab_list(vocab: dict[str, int]) -> list[str]:
    """word -> id mapping as the list of words in id order (plain data for the checkpoint)."""
    return sorted(vocab, key=vocab.__getitem__)


def vocab_dict(words: list[str]) -> dict[str, int]:
    """The checkpoint's word list back to the word -> id mapping."""
    return {word: index for index, word in enumerate(words)}


def rng_state() -> dict[str, Any]:
    """Every random generator a run uses, as tensors and plain data (weights_only-loadable)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
