"""Checkpoints: plain dicts of tensors and plain data, written atomically, read with weights_only.

A checkpoint (best.pt, last.pt) holds:
    format              CHECKPOINT_FORMAT
    model, optimizer    state dicts; scaler: the GradScaler's state dict (fp16 or bf16 on CUDA;
                        None otherwise)
    config, config_name the Config as a dict, and the name it was started with
    vocab               the words in id order; corpus_dir: a --corpus directory (None for PTB);
                        data_dir: the --data-dir whose ptb/ it trained on (None for a --corpus)
    splits_sha256       each split's Corpus.fingerprints: a resume is refused another text
    state               the carried LSTM (h, c) of all batch rows for the next window (at an
                        epoch boundary None, or zeros from the graphed step: either way the next
                        epoch starts from zeros)
    max_steps           the run's --max-steps limit (None for none)
    eval_tokens         its --eval-tokens limit (None for none)
    world_size          the number of torchrun processes that trained it
    rng                 torch / cuda / numpy / python random states, as tensors and plain data
    rank_rngs           every rank's torch (and cuda) generator state: the dropout masks
    versions            ptblm and torch versions that wrote it
and the fields of RunState (run_state.py): how the run was started, where it stands, the epoch's
running sums, the best epoch, the history and the clock (config_name, max_steps and eval_tokens
among them).

No pickled objects: `torch.load(weights_only=True)` reads it (checkpoint_load.py, with the
checks a damaged or crafted file fails), and a file carrying a pickle payload is refused
instead of executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch

from ptblm import __version__
from ptblm.atomic import atomic_write, out_of_space, write_fix
from ptblm.config import Config, build_config
from ptblm.data import Corpus
from ptblm.distributed import Distributed
from ptblm.download import DEFAULT_DATA_DIR
from ptblm.errors import CheckpointError, ConfigError, DataError, cut
from ptblm.model import LSTMLanguageModel, State
from ptblm.run_state import RunState
from ptblm.runtime import rng_state, set_rng_state

USE_ANOTHER = "Use another checkpoint (best.pt or last.pt of a run)."
CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, checkpoint: dict[str, Any]) -> None:
    """Write a checkpoint atomically; CheckpointError (old file intact) if the disk refuses."""
    try:
        atomic_write(path, lambda file: torch.save(checkpoint, file))
    except (OSError, RuntimeError) as error:
        # torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ...").
        reason = getattr(error, "strerror", None) or "the write failed"
        if out_of_space(error):
            with contextlib.suppress(OSError):
                reason += f"; {shutil.disk_usage(path.parent).free / 2**20:.1f} MB free there"
        raise CheckpointError(
            f"could not write {path} ({reason}); the previous checkpoint there, if any, is "
            f"intact. {write_fix(error).capitalize()} or choose another --runs-dir."
        ) from None


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: Path, cell: str | None = None
) -> LSTMLanguageModel:
    """The model a checkpoint holds, on the CPU; `cell` runs its LSTM with another cell (fused or
    reference: the same parameters)."""
    config = checkpoint_config(checkpoint, path)
    if cell is not None:
        config = dataclasses.replace(config, cell=cell, recurrent_dropout=0.0)  # eval: no dropout
    try:
        # Building the model draws its initial weights, which the checkpoint's then replace: on a
        # forked generator, so that loading best.pt mid-run leaves later dropout masks as they were.
        with torch.random.fork_rng(devices=[]):
            model = LSTMLanguageModel.from_config(config)
    except ConfigError as error:  # the config asks for more memory than there is
        raise CheckpointError(f"{path}: {error}") from None
    weights = checkpoint["model"]
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as error:
        # torch's message opens with "Error(s) in loading state_dict for ...:"; the tensor is next.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
        raise CheckpointError(
            f"{path}: its weights do not fit its config ({cut(reason, 200)})."
        ) from None
    # Tied, the model has one matrix: two that differ were saved by an untied model.
    if config.tie_weights and not torch.equal(
        weights["embedding.weight"], weights["decoder.weight"]
    ):
        raise CheckpointError(
            f"{path}: its weights do not fit its config (tie_weights is true, yet its "
            f"embedding.weight and decoder.weight differ)."
        )
    return model


def checkpoint_config(checkpoint: dict[str, Any], path: Path) -> Config:
    try:
        return build_config(checkpoint["config"], where=f"{path} (config)")
    except ConfigError as error:
        raise CheckpointError(f"{path} holds an invalid config: {error}") from None
    except (AttributeError, TypeError):
        raise CheckpointError(f"{path} holds no config mapping.") from None


def corpus_dir_for(checkpoint: dict[str, Any], given: Path | None) -> Path | None:
    """The corpus directory to use with a checkpoint: the one given, else the one it was trained
    on (recorded when that was not PTB); None: PTB."""
    recorded = checkpoint.get("corpus_dir")
    if given is None and isinstance(recorded, str) and recorded:
        if not Path(recorded).is_dir():
            raise DataError(
                f"the corpus this model was trained on, {recorded}, is no longer there: pass "
                f"--corpus DIR with it (or a copy)."
            )
        return Path(recorded)
    return given


def data_dir_for(checkpoint: dict[str, Any], given: Path | None) -> Path:
    """The PTB data directory to use with a checkpoint: the one given (--data-dir), else the one
    it was trained with while its ptb/ is there, else ./data (downloaded into on demand)."""
    recorded = checkpoint.get("data_dir")
    if given is None and isinstance(recorded, str) and recorded and Path(recorded, "ptb").is_dir():
        return Path(recorded)
    return given if given is not None else DEFAULT_DATA_DIR


def check_vocabulary(checkpoint: dict[str, Any], corpus: Corpus, path: Path) -> None:
    """A model only fits the corpus whose training split gave its vocabulary."""
    if corpus.vocab != vocab_dict(checkpoint["vocab"]):
        raise CheckpointError(
            f"{path} was trained on another vocabulary than the corpus in {corpus.folder}: use it "
            f"with the corpus it was trained on (--corpus DIR or --data-dir DIR)."
        )


def check_same_text(checkpoint: dict[str, Any], corpus: Corpus, path: Path) -> None:
    """A resumed run trains, validates and tests on the text it started with (one with the same
    vocabulary but other valid or test text mixed two sets in one run's history)."""
    check_vocabulary(checkpoint, corpus, path)
    saved = checkpoint.get("splits_sha256")
    if not isinstance(saved, dict):  # a checkpoint of an older version
        return
    changed = [
        name for name, digest in corpus.fingerprints.items() if saved.get(name, digest) != digest
    ]
    if changed:
        raise CheckpointError(
            f"the {' and '.join(changed)} text in {corpus.folder} is not what {path} was trained "
            f"with: resume it with the corpus it started with (--corpus DIR or --data-dir DIR)."
        )


def vocab_list(vocab: dict[str, int]) -> list[str]:
    """word -> id mapping as the list of words in id order (plain data for the checkpoint)."""
    return sorted(vocab, key=vocab.__getitem__)


def vocab_dict(words: list[str]) -> dict[str, int]:
    """The checkpoint's word list back to the word -> id mapping."""
    return {word: index for index, word in enumerate(words)}


def training_checkpoint(
    state: RunState,
    model: LSTMLanguageModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    config: Config,
    corpus: Corpus,
    carried: State | None,
    dist: Distributed,
    device: torch.device,
) -> dict[str, Any]:
    """The checkpoint of a run in training. A collective under torchrun: every rank calls it
    (the carried state and the generators of all ranks are gathered), rank 0 saves it."""
    if carried is not None:
        carried = [torch.cat(dist.gather(tensor), dim=1).cpu() for tensor in carried]
    rank_rngs = [t.cpu() for t in dist.gather(torch.get_rng_state().to(device))]
    if device.type == "cuda":
        rank_rngs += [t.cpu() for t in dist.gather(torch.cuda.get_rng_state(device).to(device))]
    return {
        **state.to_dict(),
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler else None,
        "config": config.to_dict(),
        "vocab": vocab_list(corpus.vocab),
        "corpus_dir": str(corpus.folder.resolve()) if corpus.custom else None,
        "data_dir": None if corpus.custom else str(corpus.folder.resolve().parent),
        "splits_sha256": corpus.fingerprints,
        "state": carried,
        "world_size": dist.world_size,
        "rng": rng_state(),
        "rank_rngs": rank_rngs,
        "versions": {"ptblm": __version__, "torch": str(torch.__version__)},
    }


def restore_training(
    checkpoint: dict[str, Any],
    path: Path,
    model: LSTMLanguageModel,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rows: range,
    windows_per_epoch: int,
    dist: Distributed,
    device: torch.device,
) -> tuple[RunState, State | None]:
    """Load a training checkpoint into a freshly built model, optimizer and scaler, and every
    generator; return the run's state and this rank's rows of the carried LSTM state."""
    # A finished run only tests (rank 0): any process count may do that, or say it is done.
    if checkpoint.get("world_size", 1) != dist.world_size and not checkpoint.get("finished"):
        raise CheckpointError(
            f"this run was trained by {checkpoint.get('world_size', 1)} process(es); resume it "
            f"with as many (torchrun --nproc_per_node), so that it continues exactly."
        )
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scaler and checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        state = RunState.from_checkpoint(checkpoint)
        if state.window > windows_per_epoch:  # load_checkpoint checked the type
            raise ValueError(f"window {state.window} of an epoch of {windows_per_epoch}")
        carried = None
        if checkpoint["state"] is not None:
            carried = tuple(t[:, rows.start : rows.stop].to(device) for t in checkpoint["state"])
            expected = (model.num_layers, len(rows), model.hidden_size)
            shapes = [tuple(t.shape) for t in carried]
            if shapes != [expected, expected]:  # (h, c)
                raise ValueError(f"carried state of shapes {shapes}")
        set_rng_state(checkpoint["rng"])
        if dist.enabled:
            rngs = checkpoint["rank_rngs"]
            torch.set_rng_state(rngs[dist.rank])
            if device.type == "cuda":
                torch.cuda.set_rng_state(rngs[dist.world_size + dist.rank], device)
    except (KeyError, IndexError, ValueError, TypeError, RuntimeError, AttributeError) as error:
        detail = f"missing {error}" if isinstance(error, KeyError) else str(error).splitlines()[0]
        raise CheckpointError(
            f"{path} cannot be resumed ({detail[:200]}): it is damaged or was written by another "
            f"version. Start a new run."
        ) from None
    return state, carried
