"""Several trained models as one: the paper's "averaged" rows.

At every position the members' predicted distributions are averaged, each member carrying its
own LSTM state; the perplexity is that of the averaged distribution:

    window k:   x ──► member A ──► p_A(· | history)     (A's own (h, c), carried)
                x ──► member B ──► p_B(· | history)     (B's own (h, c), carried)
    log p(y) = log((p_A(y) + p_B(y)) / 2) = logsumexp_m(log p_m(y)) - log M

Only the target's probability enters the perplexity, so the members run window by window in
lockstep and keep each predicted token's log-probability, never the logits of the whole stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptblm.checkpoint import (
    check_vocabulary,
    checkpoint_config,
    corpus_dir_for,
    data_dir_for,
    model_from_checkpoint,
)
from ptblm.checkpoint_load import load_checkpoint
from ptblm.config import Config
from ptblm.data import Corpus, load_corpus, windows
from ptblm.errors import CheckpointError
from ptblm.model import LSTMLanguageModel, token_nll
from ptblm.runtime import configure_tf32


@dataclass
class Member:
    path: Path
    checkpoint: dict[str, Any]
    config: Config
    model: LSTMLanguageModel


def load_members(paths: list[Path], device: torch.device, cell: str | None = None) -> list[Member]:
    """Load each checkpoint's model; CheckpointError unless all share one vocabulary. On CUDA,
    TF32 is set as the (first) member was trained with, so that it computes as in training."""
    members = []
    for path in paths:
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path, cell).to(device).eval()
        members.append(Member(path, checkpoint, checkpoint_config(checkpoint, path), model))
    first = members[0]
    if device.type == "cuda":
        configure_tf32(first.config.allow_tf32)
    for member in members[1:]:
        if member.checkpoint["vocab"] != first.checkpoint["vocab"]:
            raise CheckpointError(
                f"{member.path} and {first.path} were trained on different vocabularies: an "
                f"ensemble averages distributions over one vocabulary. Use members trained on the "
                f"same corpus."
            )
    return members


@torch.no_grad()
def member_logprobs(
    models: list[LSTMLanguageModel], data: torch.Tensor, num_steps: int, partial: bool
) -> torch.Tensor:
    """Each member's log-probability of every predicted token, members in lockstep.

    data: (rows, length) int64 on the models' device, read in windows of num_steps (the last,
    shorter one too with `partial`). Returns (members, rows, predicted) float64 on the CPU.
    """
    states = [model.initial_state(data.size(0), data.device) for model in models]
    columns = [
        members_window(models, states, x, y) for x, y in windows(data, num_steps, partial=partial)
    ]
    return torch.cat(columns, dim=2)


def members_window(
    models: list[LSTMLanguageModel], states: list, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """(members, rows, T) float64 on the CPU: each member's log-probability of y (rows, T) given
    x, from its state in `states`, which is replaced by the state after the window."""
    window = []
    for k, model in enumerate(models):
        logits, states[k] = model(x, states[k])
        window.append(-token_nll(logits, y, "none").view_as(y))
    return torch.stack(window).double().cpu()


def member_corpus(
    member: Member, data_dir: Path | None, corpus_dir: Path | None, progress: bool = False
) -> Corpus:
    """The corpus a checkpoint is evaluated on: --corpus (or --data-dir), else the one it was
    trained on (recorded in the checkpoint); CheckpointError for another vocabulary."""
    corpus = load_corpus(
        data_dir_for(member.checkpoint, data_dir),
        corpus_dir_for(member.checkpoint, corpus_dir),
        progress=progress,
    )
    check_vocabulary(member.checkpoint, corpus, member.path)
    return corpus


def average(logprobs: torch.Tensor) -> torch.Tensor:
    """(members, ...) log-probabilities -> (...) log-probability of the averaged distribution."""
    return torch.logsumexp(logprobs, dim=0) - math.log(logprobs.size(0))
