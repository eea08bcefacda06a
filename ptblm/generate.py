"""Sampling text from a trained model: `ptblm generate RUN [--prompt TEXT] [--words N] ...`.

The model reads `<eos>` (a sentence start, as before every sentence in training), then the
prompt, carrying its state; then each sampled word is fed back in:

    <eos> the company said ──► p(· | prompt) ──► sample w1 ──► p(· | prompt w1) ──► w2 ...

A word is drawn from the softmax of logits / temperature, among the top_k likeliest only when
top_k > 0. One torch.Generator seeded with `seed` draws every word, so the same seed, model and
device give the same text.
"""

from __future__ import annotations

import torch

from ptblm.data import EOS
from ptblm.errors import ConfigError
from ptblm.model import LSTMLanguageModel


def check_sampling(temperature: float, top_k: int, words: int, seed: int | None = 0) -> None:
    problems = []
    if not temperature > 0:
        problems.append(
            f"--temperature {temperature}: it must be > 0 (1.0 samples the model as is)."
        )
    if top_k < 0:
        problems.append(f"--top-k {top_k}: it must be >= 0 (0: every word may be drawn).")
    if words < 1:
        problems.append(f"--words {words}: generate at least 1.")
    if seed is not None and not 0 <= seed < 2**63:
        problems.append(f"--seed {seed}: use an integer from 0 to 2**63 - 1.")
    if problems:
        raise ConfigError(problems)


@torch.no_grad()
def generate(
    model: LSTMLanguageModel,
    vocab: dict[str, int],
    prompt_ids: list[int],
    words: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> list[int]:
    """`words` sampled ids (an `<eos>` counts as one), continuing the prompt."""
    check_sampling(temperature, top_k, words, seed)
    if EOS not in vocab:
        raise ConfigError(f"the model's vocabulary has no {EOS}: generation starts from one.")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    inputs = torch.tensor([[vocab[EOS], *prompt_ids]], device=device)
    logits, state = model(inputs, None)
    sampled = []
    for _ in range(words):
        scores = logits[0, -1].float() / temperature
        if 0 < top_k < scores.numel():
            kept = torch.topk(scores, top_k)
            scores = torch.full_like(scores, -torch.inf).scatter(0, kept.indices, kept.values)
        word = torch.multinomial(torch.softmax(scores, dim=0), 1, generator=generator)
        sampled.append(int(word))  # HOST SYNC per word: the word is printed anyway
        logits, state = model(word.view(1, 1), state)
    return sampled


def as_text(words: list[str]) -> str:
    """Words joined by spaces, each `<eos>` a line break."""
    lines, line = [], []
    for word in words:
        if word == EOS:
            lines.append(" ".join(line))
            line = []
        else:
            line.append(word)
    return "\n".join([*lines, " ".join(line)])
