"""Sampling text from a trained model: `ptblm generate RUN [--prompt TEXT] [--words N] ...`.

The model reads `<eos>` (a sentence start, as before every sentence in training), then the
prompt, carrying its state; then each sampled word is fed back in:

    <eos> the company said ──► p(· | prompt) ──► sample w1 ──► p(· | prompt w1) ──► w2 ...

A word is drawn from the softmax of logits / temperature, among the top_k likeliest only when
top_k > 0. One torch.Generator seeded with `seed` draws every word, so the same seed, model and
device give the same text. Words are yielded as they are drawn, so that a long text prints as it
comes, and a prompt is read in windows, so that only one window's logits are ever held.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from ptblm.data import EOS
from ptblm.errors import CheckpointError, ConfigError
from ptblm.model import LSTMLanguageModel

# logits / temperature must stay finite in fp32: logits of a trained model are tens at most, and
# below 1e-3 sampling is greedy anyway (--top-k 1 says so directly).
MIN_TEMPERATURE = 1e-3
PROMPT_WINDOW = 500  # prompt tokens read at a time: (window x vocab) logits, not (prompt x vocab)


def sampling_problems(
    temperature: float, top_k: int, words: int, seed: int | None = 0
) -> list[tuple[str, object, str]]:
    """(setting, value, what is wrong) for each bad sampling setting: the library and the
    command word them each in their own terms (`temperature`, `--temperature`)."""
    problems: list[tuple[str, object, str]] = []
    if not temperature > 0:
        problems.append(
            ("temperature", temperature, "it must be > 0 (1.0 samples the model as is)")
        )
    elif not MIN_TEMPERATURE <= temperature < math.inf:
        problems.append(
            (
                "temperature",
                temperature,
                f"use a finite value >= {MIN_TEMPERATURE} (below that the scaled logits overflow; "
                f"a top-k of 1 samples greedily)",
            )
        )
    if top_k < 0:
        problems.append(("top_k", top_k, "it must be >= 0 (0: every word may be drawn)"))
    if words < 1:
        problems.append(("words", words, "generate at least 1"))
    if seed is not None and not 0 <= seed < 2**63:
        problems.append(("seed", seed, "use an integer from 0 to 2**63 - 1"))
    return problems


def sample(
    model: LSTMLanguageModel,
    vocab: dict[str, int],
    prompt_ids: list[int],
    words: int,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
) -> Iterator[int]:
    """Yield `words` sampled ids one by one, as each is drawn."""
    if problems := sampling_problems(temperature, top_k, words, seed):
        raise ConfigError([f"{name} {value}: {rule}." for name, value, rule in problems])
    if EOS not in vocab:
        raise CheckpointError(f"the model's vocabulary has no {EOS}: generation starts from one.")
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        logits, state = _read_prompt(model, [vocab[EOS], *prompt_ids], device)
    for drawn in range(words):
        with torch.no_grad():
            scores = logits.float() / temperature
            if not torch.isfinite(scores).all():  # a diverged model: nothing to draw from
                raise CheckpointError(
                    "the model's predictions are not finite numbers (its training diverged?): "
                    "sample from another checkpoint, e.g. the run's best.pt."
                )
            if 0 < top_k < scores.numel():
                kept = torch.topk(scores, top_k)
                scores = torch.full_like(scores, -torch.inf).scatter(0, kept.indices, kept.values)
            word = torch.multinomial(torch.softmax(scores, dim=0), 1, generator=generator)
        # Out of the no_grad block: a generator suspended inside one would leave grad mode off
        # for its caller.
        yield int(word)  # HOST SYNC per word: the word is printed anyway
        if drawn + 1 < words:
            with torch.no_grad():
                logits, state = model(word.view(1, 1), state)
                logits = logits[0, -1]


def _read_prompt(model: LSTMLanguageModel, ids: list[int], device: torch.device):
    """The logits after the last id, (vocab,), and the state: the ids in windows, the state
    carried."""
    state = None
    for start in range(0, len(ids), PROMPT_WINDOW):
        window = torch.tensor([ids[start : start + PROMPT_WINDOW]], device=device)
        logits, state = model(window, state)
        logits = logits[0, -1]  # the window's other positions are dropped at once
    return logits, state


def stream_text(words: Iterable[str], write: Callable[[str], None]) -> None:
    """Write the words as they come: a word that does not start a line gets a space before it,
    an `<eos>` is a line break."""
    line_start = True
    for word in words:
        if word == EOS:
            write("\n")
            line_start = True
        else:
            write(word if line_start else " " + word)
            line_start = False
