"""Perplexity of a model on a split, and `ptblm eval` on a saved checkpoint.

Two protocols (REFERENCE.md, "Evaluation"):
- validation after each epoch: the training batch_size and num_steps, full windows only;
- test, the table's number: batch_size 1 over the whole stream, every token after the first
  predicted once. With one row, dropout off and the state carried, the window length does not
  change the result, so a long window (TEST_NUM_STEPS) is used for speed and the last, shorter
  window is evaluated too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ptblm.checkpoint import checkpoint_config, load_checkpoint, vocab_dict
from ptblm.data import batchify, load_corpus, windows
from ptblm.errors import CheckpointError, DataError
from ptblm.model import LSTMLanguageModel, configure_tf32

TEST_BATCH_SIZE = 1
TEST_NUM_STEPS = 500  # any length gives the same number with batch_size 1; longer is faster


@torch.no_grad()
def evaluate(
    model: LSTMLanguageModel,
    ids: torch.Tensor,
    batch_size: int = TEST_BATCH_SIZE,
    num_steps: int = TEST_NUM_STEPS,
    row_range: tuple[int, int] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[float, float]:
    """Summed negative log-likelihood (nats) and number of predicted tokens over `ids`.

    ids: 1-D int64. With batch_size 1 (the test protocol) the last, shorter window is evaluated
    too, so every token after the first is predicted; otherwise only full windows (the
    validation protocol). `row_range` evaluates only those rows of the batch (a distributed rank's
    share); the caller sums the ranks' results. Dropout is off; the state starts at zero and is
    carried across windows. Perplexity = exp(nll / tokens).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    data = batchify(ids, batch_size)
    if row_range is not None:
        data = data[row_range[0] : row_range[1]]
    data = data.to(device)
    state = model.initial_state(data.size(0), device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for x, y in windows(data, num_steps, partial=batch_size == 1):
        logits, state = model(x, state)
        nll += torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), reduction="sum"
        ).double()
        tokens += y.numel()
        if should_stop():
            break
    model.train(was_training)
    return nll.item(), tokens


def perplexity(nll: float, tokens: int) -> float:
    """exp(mean NLL); inf when that overflows a float (a diverging model), nan for no tokens."""
    if not tokens:
        return math.nan
    try:
        return math.exp(nll / tokens)
    except OverflowError:
        return math.inf


def newest_run(runs_dir: Path) -> Path:
    """The run directory under runs_dir whose checkpoint was written last."""
    candidates = [
        path for path in Path(runs_dir).glob("*/*.pt") if path.name in ("best.pt", "last.pt")
    ]
    if not candidates:
        raise CheckpointError(
            f"no run with a checkpoint under {runs_dir}. Train one first (ptblm train --config "
            f"small), or name a run directory or checkpoint: ptblm eval RUN_DIR."
        )
    return max(candidates, key=lambda path: path.stat().st_mtime).parent


def resolve_checkpoint(target: Path | None, runs_dir: Path) -> Path:
    """A checkpoint file as given, or a run directory's best.pt (newest run when None)."""
    run_dir = newest_run(runs_dir) if target is None else Path(target)
    if run_dir.is_file():
        return run_dir
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such run directory or checkpoint file.")
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(
        f"{run_dir} holds no best.pt or last.pt: it is not a ptblm run directory."
    )


def model_from_checkpoint(checkpoint: dict[str, Any], path: Path) -> LSTMLanguageModel:
    model = LSTMLanguageModel.from_config(checkpoint_config(checkpoint, path))
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: its weights do not fit its config ({str(error).splitlines()[0][:200]})."
        ) from None
    return model


def evaluate_checkpoint(
    path: Path,
    split: str = "test",
    batch_size: int = TEST_BATCH_SIZE,
    num_steps: int | None = None,
    data_dir: Path = Path("data"),
    corpus_dir: Path | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load a checkpoint and return its perplexity on a split, as a JSON-ready dict.

    A checkpoint trained on a --corpus directory is evaluated on that directory by default.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    device = device or torch.device("cpu")
    if device.type == "cuda":
        configure_tf32(config.allow_tf32)  # compute exactly as the trainer did
    model = model_from_checkpoint(checkpoint, path).to(device)
    if corpus_dir is None and checkpoint.get("corpus_dir"):
        corpus_dir = Path(checkpoint["corpus_dir"])
    corpus = load_corpus(data_dir, corpus_dir, progress=progress)
    if corpus.vocab != vocab_dict(checkpoint["vocab"]):
        raise DataError(
            f"{path} was trained with another vocabulary than the corpus in {corpus.folder}: "
            f"evaluate it on the corpus it was trained on (--corpus DIR or --data-dir DIR)."
        )
    if num_steps is None:
        num_steps = TEST_NUM_STEPS if batch_size == 1 else config.num_steps
    started = time.perf_counter()
    nll, tokens = evaluate(model, corpus.split(split), batch_size, num_steps)
    return {
        "perplexity": perplexity(nll, tokens),
        "split": split,
        "tokens": tokens,
        "checkpoint": str(path),
        "epoch": checkpoint["epoch"],
        "global_step": checkpoint["global_step"],
        "batch_size": batch_size,
        "num_steps": num_steps,
        "seconds": round(time.perf_counter() - started, 3),
    }
