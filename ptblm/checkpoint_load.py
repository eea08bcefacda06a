"""Reading a checkpoint back (what one holds: checkpoint.py). `torch.load(weights_only=True)`
unpickles only tensors and plain containers, so a crafted file cannot run code; then every
check that a damaged or crafted file fails, each with one short reason: not a torch file, not a
ptblm checkpoint, another format, a CRC-32 that fails (a bit flipped on disk), a position in
training of the wrong type or range, weights that no model saves (sparse, integer, NaN).
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ptblm.checkpoint import CHECKPOINT_FORMAT, USE_ANOTHER, checkpoint_config
from ptblm.config import Config
from ptblm.errors import CheckpointError, cut, quote

REQUIRED_KEYS = ("format", "model", "config", "vocab", "epoch", "window", "global_step")


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; CheckpointError says what is wrong with it.

    weights_only=True: only tensors and plain containers are unpickled, so a crafted file
    cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    try:
        with warnings.catch_warnings():  # torch's word on a file it refuses: ours follows
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for garbage, truncation and payloads
        reason = _load_failure(error) if zipfile.is_zipfile(path) else NOT_A_ZIP
        raise CheckpointError(
            f"{path} is not a readable ptblm checkpoint ({reason}). {USE_ANOTHER}"
        ) from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is a torch file but not a ptblm checkpoint (keys missing).")
    if not isinstance(checkpoint["format"], int) or checkpoint["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {checkpoint['format']!r}; this ptblm reads format "
            f"{CHECKPOINT_FORMAT}."
        )
    _check_crc(path)
    config = checkpoint_config(checkpoint, path)
    vocab = checkpoint["vocab"]
    if (
        not isinstance(vocab, list)
        or not all(isinstance(word, str) for word in vocab)
        or len(vocab) != config.vocab_size
        or len(set(vocab)) != len(vocab)
    ):
        raise CheckpointError(f"{path}: its vocabulary does not match its config's vocab_size.")
    _check_position(checkpoint, config, path)
    weights = checkpoint["model"]
    for name, tensor in weights.items() if isinstance(weights, dict) else ():
        if not isinstance(tensor, torch.Tensor):
            continue  # load_state_dict says so, with the model's names
        shown = cut(str(name), 60)
        dense = tensor.layout == torch.strided and tensor.device.type == "cpu"
        if not (dense and tensor.is_floating_point()):  # sparse, meta, integer or complex
            raise CheckpointError(
                f"{path} is damaged: its {shown} is a {tensor.layout} {tensor.dtype} tensor on "
                f"{tensor.device.type}, where dense floating-point weights belong. {USE_ANOTHER}"
            )
        # The divergence guard keeps a training run's weights finite: the file was changed, or
        # an update overflowed fp32 (a learning rate near 3.4e38).
        if not torch.isfinite(tensor).all():
            raise CheckpointError(
                f"{path} is damaged: its {shown} holds NaN or infinite values. {USE_ANOTHER}"
            )
    return checkpoint


def _check_crc(path: Path) -> None:
    """torch.save records each entry's CRC-32 and torch.load does not check it: a bit flipped
    on disk would load as a slightly different model. Checked here: 0.1 s for a 264 MB file."""
    if not zipfile.is_zipfile(path):  # torch's legacy format, which ptblm never wrote: no CRCs
        return
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception:  # zipfile raises several types for a damaged archive
        damaged = "its archive"
    if damaged is not None:
        raise CheckpointError(
            f"{path} is damaged: {cut(str(damaged), 60)} fails its checksum (the file changed "
            f"on disk after it was written). {USE_ANOTHER}"
        )


def _check_position(checkpoint: dict[str, Any], config: Config, path: Path) -> None:
    """Where the run stands, as integers in range: a resumed run counts and indexes with them,
    and a wrong type fails deep inside training, a wrong number silently. Whether `window` lies
    inside an epoch depends on the corpus; restore_training checks that."""
    limits = {"epoch": config.max_max_epoch, "window": None, "global_step": None}
    for name, most in limits.items():
        value = checkpoint[name]
        if type(value) is not int or value < 0 or (most is not None and value > most):
            allowed = f"0 to max_max_epoch ({most})" if most is not None else ">= 0"
            raise CheckpointError(
                f"{path} is damaged: its {name} is {quote(value)}, where an integer {allowed} "
                f"belongs. {USE_ANOTHER}"
            )


# torch.load's refusals open with a paragraph on its weights_only default and end with a pointer
# to its documentation: no help to someone whose file is not a checkpoint. The reason is between.
_TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


NOT_A_ZIP = "truncated, or not a checkpoint: torch.save writes a zip archive and this file is none"


def _load_failure(error: Exception) -> str:
    """One short line on why torch.load refused a file."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(_TORCH_BOILERPLATE)]
    for line in reasons:
        if "GLOBAL" in line:
            return (
                "it holds pickled Python objects, which a checkpoint never does; they were refused, "
                "not run: " + cut(line.split("error:", 1)[-1].strip(), 120)
            )
    reason = reasons[0].split(". ")[0] if reasons else type(error).__name__
    return f"truncated, corrupt or not a torch file: {cut(reason, 100)}"
