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

from ptblm.checkpoint import (
    check_vocabulary,
    checkpoint_config,
    load_checkpoint,
    model_from_checkpoint,
)
from ptblm.data import batchify, load_corpus, windows
from ptblm.model import LSTMLanguageModel, token_nll
from ptblm.runtime import configure_tf32

TEST_BATCH_SIZE = 1
TEST_NUM_STEPS = 500  # any length gives the same number with batch_size 1; longer is faster


@torch.no_grad()
def evaluate(
    model: LSTMLanguageModel,
    ids: torch.Tensor,
    batch_size: int = TEST_BATCH_SIZE,
    num_steps: int = TEST_NUM_STEPS,
    rows: range | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[float, float]:
    """Summed negative log-likelihood (nats) and number of predicted tokens over `ids`.

    ids: 1-D int64. With batch_size 1 (the test protocol) the last, shorter window is evaluated
    too, so every token after the first is predicted; otherwise only full windows (the
    validation protocol). `rows` evaluates only those rows of the batch (a distributed rank's
    share); the caller sums the ranks' results. Dropout is off; the state starts at zero and is
    carried across windows. Perplexity = exp(nll / tokens).
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    data = batchify(ids, batch_size)
    if rows is not None:
        data = data[rows.start : rows.stop]
    data = data.to(device)
    state = model.initial_state(data.size(0), device)
    nll = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    for x, y in windows(data, num_steps, partial=batch_size == 1):
        logits, state = model(x, state)
        nll += token_nll(logits, y, "sum").double()
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


def evaluate_checkpoint(
    path: Path,
    split: str = "test",
    batch_size: int = TEST_BATCH_SIZE,
    num_steps: int | None = None,
    data_dir: Path = Path("data"),
    corpus_dir: Path | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    cell: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint and return its perplexity on a split, as a JSON-ready dict.

    A checkpoint trained on a --corpus directory is evaluated on that directory by default.
    `cell` (fused or reference) evaluates it with another LSTM cell than it was trained with.
    """
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    device = device or torch.device("cpu")
    if device.type == "cuda":
        configure_tf32(config.allow_tf32)  # compute exactly as the trainer did
    model = model_from_checkpoint(checkpoint, path, cell).to(device)
    if corpus_dir is None and checkpoint.get("corpus_dir"):
        corpus_dir = Path(checkpoint["corpus_dir"])
    corpus = load_corpus(data_dir, corpus_dir, progress=progress)
    check_vocabulary(checkpoint, corpus, path)
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
        "cell": model.cell,
        "seconds": round(time.perf_counter() - started, 3),
    }
