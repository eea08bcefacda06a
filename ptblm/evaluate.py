"""Perplexity of a model on a split, and `ptblm eval` on saved checkpoints (one, or an ensemble).

Two protocols (docs/reference.md, "Evaluation"):
- validation after each epoch: the training batch_size and num_steps, full windows only;
- test, the table's number: batch_size 1 over the whole stream, every token after the first
  predicted once. With one row, dropout off and the state carried, the window length does not
  change the result, so a long window (TEST_NUM_STEPS) is used for speed and the last, shorter
  window is evaluated too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ptblm import memory
from ptblm.config import Config
from ptblm.data import batchify, num_windows, windows
from ptblm.ensemble import average, load_members, member_corpus, member_logprobs
from ptblm.errors import ConfigError
from ptblm.model import LSTMLanguageModel, mean_perplexity, perplexity, token_nll
from ptblm.published import published_ensemble

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
    try:
        for x, y in windows(data, num_steps, partial=batch_size == 1):
            logits, state = model(x, state)
            nll += token_nll(logits, y, "sum").double()
            tokens += y.numel()
            if should_stop():
                break
    finally:
        model.train(was_training)
    return nll.item(), tokens


def test_perplexity(
    model: LSTMLanguageModel, ids: torch.Tensor, should_stop: Callable[[], bool] = lambda: False
) -> float:
    """The table's number: batch_size 1 over the whole stream `ids` (1-D int64)."""
    return perplexity(*evaluate(model, ids, TEST_BATCH_SIZE, TEST_NUM_STEPS, None, should_stop))


def check_window_fits(
    tokens: int, batch_size: int, num_steps: int, config: Config, device: torch.device
) -> None:
    """ConfigError when one window's logits (and their log-softmax) cannot fit on the device,
    and a --num-steps that fits with room to spare. A window is at most the split, so a huge
    --num-steps is the whole split at once: 37 GB of logits for PTB's training split."""
    window = max(min(num_steps, tokens // batch_size - 1), 1)
    per_token = (
        2 * config.vocab_size + (config.num_layers + 1) * config.hidden_size
    ) * memory.FLOAT_BYTES
    free = memory.available_bytes(device) or 0
    most = free // 2 // (batch_size * per_token)  # leave room for everything else
    scale = 10 ** max(len(str(most)) - 2, 0)
    most = most // scale * scale  # two significant digits, rounded down: 153,135 -> 150,000
    memory.check_fits(
        batch_size * window * per_token,
        device,
        f"--num-steps {num_steps} with --batch-size {batch_size} (windows of {batch_size} x "
        f"{window:,} tokens, each with {config.vocab_size:,} logits)",
        f"Use --num-steps {most} or less." if most else "Use a smaller --batch-size.",
    )


def check_one_window(tokens: int, batch_size: int, num_steps: int, split: str) -> None:
    """With batch_size > 1 only full windows are evaluated (the validation protocol): a window
    longer than a row leaves none, and no perplexity to give."""
    row = tokens // batch_size
    if row < 2:
        raise ConfigError(
            f"--batch-size {batch_size}: the {split} split's {tokens:,} tokens make rows of "
            f"{row}, and a row needs 2 at least (an input and its target). Use --batch-size "
            f"{max(1, tokens // (num_steps + 1))} or less."
        )
    if batch_size > 1 and num_windows(row, num_steps) == 0:
        raise ConfigError(
            f"--num-steps {num_steps} with --batch-size {batch_size}: the {split} split's "
            f"{tokens:,} tokens make rows of {row:,}, too short for one window of {num_steps:,} "
            f"steps (only full windows are evaluated with a batch). Use --num-steps {row - 1} or "
            f"less."
        )


def evaluate_checkpoints(
    paths: list[Path],
    split: str = "test",
    batch_size: int = TEST_BATCH_SIZE,
    num_steps: int | None = None,
    data_dir: Path | None = None,
    corpus_dir: Path | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    cell: str | None = None,
) -> dict[str, Any]:
    """Perplexity of a checkpoint, or of the ensemble of several (ensemble.py), on a split, as
    a JSON-ready dict; an ensemble's members' own perplexities come in "members".

    Checkpoints trained on a --corpus directory are evaluated on that directory by default.
    `cell` (fused or reference) runs the LSTM with another cell than it was trained with.
    """
    device = device or torch.device("cpu")
    members = load_members(paths, device, cell)
    first = members[0]
    corpus = member_corpus(first, data_dir, corpus_dir, progress)
    if num_steps is None:
        num_steps = TEST_NUM_STEPS if batch_size == 1 else first.config.num_steps
    split_tokens = corpus.split(split).numel()
    check_one_window(split_tokens, batch_size, num_steps, split)
    check_window_fits(split_tokens, batch_size, num_steps, first.config, device)
    started = time.perf_counter()
    result: dict[str, Any] = {"split": split, "batch_size": batch_size, "num_steps": num_steps}
    if len(members) == 1:  # the trainer's own evaluation, to the last bit
        nll, tokens = evaluate(first.model, corpus.split(split), batch_size, num_steps)
        result.update(perplexity=perplexity(nll, tokens), tokens=tokens)
        result["run_eval_tokens"] = first.checkpoint.get("eval_tokens")  # its run's --eval-tokens
    else:
        data = batchify(corpus.split(split), batch_size).to(device)
        logprobs = member_logprobs([m.model for m in members], data, num_steps, batch_size == 1)
        tokens = logprobs[0].numel()
        result.update(perplexity=mean_perplexity(average(logprobs)), tokens=tokens)
        result["members"] = [
            {
                "checkpoint": str(member.path),
                "perplexity": mean_perplexity(lp),
                "run_eval_tokens": member.checkpoint.get("eval_tokens"),
            }
            for member, lp in zip(members, logprobs, strict=True)
        ]
        configs = [member.config for member in members]  # the paper's averaged rows are of PTB
        result["published"] = published_ensemble(configs, split) if corpus.is_ptb else None
    result.update(
        checkpoint=str(first.path) if len(members) == 1 else [str(m.path) for m in members],
        epochs_completed=first.checkpoint["epoch"],
        global_step=first.checkpoint["global_step"],
        cell=first.model.cell,
        seconds=round(time.perf_counter() - started, 3),
    )
    return result
