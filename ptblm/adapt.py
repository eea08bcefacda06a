"""Evaluation that adapts to the text it scores: the continuous cache (cache.py), dynamic
evaluation (dynamic.py), or both, in the table's test protocol (batch size 1, the whole stream,
every token after the first predicted once), with settings given or chosen on the validation
split by `--tune` (tune.py).

    for each window of the stream (dynamic: a segment of N predictions):
        h, state = model.features(x, state)            dynamic: with gradients
        log p_model(y) = log_softmax(decoder(h))[y]
        log p(y) = cache.mix(h, log p_model(y), y)     the cache reads the (adapted) model's h
        dynamic: one step on the window's mean NLL     after its score is kept
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ptblm.cache import CacheSettings, ContinuousCache
from ptblm.checkpoint import vocab_dict
from ptblm.data import windows
from ptblm.dynamic import DynamicEvaluation, DynamicSettings
from ptblm.ensemble import load_members, member_corpus
from ptblm.errors import counted
from ptblm.evaluate import TEST_NUM_STEPS, test_perplexity
from ptblm.model import LSTMLanguageModel, detach_state, mean_perplexity
from ptblm.text import TextScorer, check_covered, read_lines


class Adaptation:
    """One model reading one stream (batch size 1) with the cache and/or dynamic evaluation.

    `score(x, y, state)` takes the stream's next window (of `window` steps, the last one
    shorter); with dynamic evaluation the window is read in segments of N predictions, each
    scored, then learned from. `close()` puts the trained weights back and the model's mode as
    it was.
    """

    def __init__(
        self,
        model: LSTMLanguageModel,
        cache: CacheSettings | None = None,
        dynamic: DynamicSettings | None = None,
    ):
        self.model, self.dynamic = model, dynamic
        # Windows of whole segments, so that every segment holds N predictions, none cut short
        # at a window's edge (500 // 30 * 30 = 480 steps for segments of 30).
        segment = dynamic.segment if dynamic else 1
        self.window = TEST_NUM_STEPS // segment * segment
        self.learner = DynamicEvaluation(model, dynamic) if dynamic else None
        self.memory = ContinuousCache(cache) if cache else None
        self.was_training = model.training
        model.eval()
        # cuDNN's LSTM has no backward in evaluation mode; the native kernels do.
        device = next(model.parameters()).device
        self.cudnn = not (self.learner and device.type == "cuda")

    def model_pass(self, x, y, state):
        """One segment, x and y (1, T): the top layer's output (T, H), log p_model(y) (T,)
        float64, the new state; with dynamic evaluation, the weights then take their step."""
        with (
            torch.backends.cudnn.flags(enabled=self.cudnn),
            torch.set_grad_enabled(self.learner is not None),
        ):
            hidden, new_state = self.model.features(x, state)
            logprob = torch.log_softmax(self.model.decoder(hidden).float(), dim=-1)
            logprob = logprob.gather(-1, y[..., None])[0, :, 0]
            if self.learner:
                self.learner.update(-logprob.mean())  # after the score was computed
        return hidden[0].detach(), logprob.detach().double(), detach_state(new_state)

    def score(self, x: torch.Tensor, y: torch.Tensor, state):
        """x, y (1, T) -> log p(y) (T,) float64 on the CPU, and the state after the window."""
        step = self.dynamic.segment if self.dynamic else x.size(1)
        scored = []
        for start in range(0, x.size(1), step):
            ys = y[:, start : start + step]
            hidden, logprob, state = self.model_pass(x[:, start : start + step], ys, state)
            if self.memory:
                logprob = self.memory.mix(hidden, logprob, ys[0])
            scored.append(logprob.cpu())
        return torch.cat(scored), state

    def close(self) -> None:
        if self.learner:
            self.learner.reset()
        self.model.train(self.was_training)


def stream_logprobs(
    model: LSTMLanguageModel,
    ids: torch.Tensor,
    cache: CacheSettings | None = None,
    dynamic: DynamicSettings | None = None,
) -> torch.Tensor:
    """log p of every token after the first of the 1-D stream `ids`, float64 on the CPU, in the
    windows `--text` reads a stream in (Adaptation.window); the cache reads the (adapted)
    model's h. Neither: `evaluate`'s test protocol."""
    device = next(model.parameters()).device
    adaptation = Adaptation(model, cache, dynamic)
    state = model.initial_state(1, device)
    scored = []
    try:
        for x, y in windows(ids.to(device)[None, :], adaptation.window, partial=True):
            logprob, state = adaptation.score(x, y, state)
            scored.append(logprob)
    finally:
        adaptation.close()
    return torch.cat(scored)


def adapted_perplexity(model, ids, cache=None, dynamic=None) -> float:
    return mean_perplexity(stream_logprobs(model, ids, cache, dynamic))


def evaluate_adapted(
    model: LSTMLanguageModel,
    ids: torch.Tensor,
    cache: CacheSettings | None,
    dynamic: DynamicSettings | None,
) -> dict[str, Any]:
    """The plain and the adapted perplexity of the stream, the settings and the seconds."""
    started = time.perf_counter()
    plain = test_perplexity(model, ids)  # the table's number, to the last bit
    plain_seconds = time.perf_counter() - started
    started = time.perf_counter()
    adapted = adapted_perplexity(model, ids, cache, dynamic)
    return {
        "plain_perplexity": plain,
        "perplexity": adapted,
        "cache": cache.as_dict() if cache else None,
        "dynamic": dynamic.as_dict() if dynamic else None,
        "plain_seconds": round(plain_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }


def evaluate_checkpoint_adapted(
    path: Path,
    split: str,
    data_dir: Path | None,
    corpus_dir: Path | None,
    device: torch.device,
    cell: str | None,
    cache: CacheSettings | None,
    dynamic: DynamicSettings | None,
    tuning: bool,
) -> dict[str, Any]:
    """`ptblm eval RUN --cache/--dynamic [--tune]` on a split: the JSON-ready result."""
    from ptblm.tune import settle  # tune.py grids over this module's adapted_perplexity

    (member,) = load_members([path], device, cell)
    corpus = member_corpus(member, data_dir, corpus_dir)  # loaded once, for --tune and the split
    cache, dynamic, tried = settle(member.model, lambda: corpus.valid, cache, dynamic, tuning)
    ids = corpus.split(split)
    result = evaluate_adapted(member.model, ids, cache, dynamic)
    result.update(split=split, tokens=ids.numel() - 1, checkpoint=str(path), tuned_on_valid=tried)
    result["run_eval_tokens"] = member.checkpoint.get("eval_tokens")  # its run's --eval-tokens
    return result


def score_text_adapted(
    path: Path,
    text: Path,
    data_dir: Path | None,
    corpus_dir: Path | None,
    device: torch.device,
    cell: str | None,
    cache: CacheSettings | None,
    dynamic: DynamicSettings | None,
    tuning: bool,
) -> dict[str, Any]:
    """`ptblm eval RUN --text FILE --cache/--dynamic [--tune]`: the file's plain and adapted
    perplexity (its lines one stream, the state carried), as a JSON-ready result."""
    from ptblm.tune import settle  # tune.py grids over this module's adapted_perplexity

    (member,) = load_members([path], device, cell)
    valid = lambda: member_corpus(member, data_dir, corpus_dir).valid  # noqa: E731 (--tune only)
    cache, dynamic, tried = settle(member.model, valid, cache, dynamic, tuning)
    vocab = vocab_dict(member.checkpoint["vocab"])
    check_covered(read_lines(text), vocab)
    plain = TextScorer([member.model], vocab, device=device)
    for _ in plain.rows(read_lines(text)):
        pass
    started = time.perf_counter()
    adaptation = Adaptation(member.model, cache, dynamic)
    try:
        scorer = TextScorer([member.model], vocab, device=device, adaptation=adaptation)
        for _ in scorer.rows(read_lines(text)):
            pass
    finally:
        adaptation.close()
    return {
        **scorer.total,
        "file": str(text),
        "checkpoint": str(path),
        "plain_perplexity": plain.total["perplexity"],
        "cache": cache.as_dict() if cache else None,
        "dynamic": dynamic.as_dict() if dynamic else None,
        "tuned_on_valid": tried,
        "seconds": round(time.perf_counter() - started, 3),
    }


def number(value: float) -> str:
    """A setting as typed: 500, 0.3 (a window of a million stays 1000000, not 1e+06)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def worded(result: dict[str, Any]) -> str:
    """The settings a result's "cache" and "dynamic" hold, in words: "the cache (window 500, ...)"."""
    what = []
    for key, label in (("cache", "the cache"), ("dynamic", "dynamic evaluation")):
        if result[key]:
            values = ", ".join(f"{name} {number(value)}" for name, value in result[key].items())
            what.append(f"{label} ({values})")
    return " and ".join(what)


def describe(result: dict[str, Any]) -> str:
    """The lines `ptblm eval --cache/--dynamic` prints, on a split or a --text file: the grid
    (with --tune), then the result."""
    lines = []
    for point in result.get("tuned_on_valid") or []:
        (kind, settings), ppl = next(iter(point.items())), point["valid_ppl"]
        values = ", ".join(f"{key} {number(value)}" for key, value in settings.items())
        lines.append(f"  valid {ppl:9.3f}  {kind.removesuffix('Settings').lower()}: {values}")
    ppl, change = result["perplexity"], result["perplexity"] / result["plain_perplexity"] - 1
    plain = (
        f"plain {result['plain_perplexity']:.3f} ({change:+.1%}), over "
        f"{counted(result['tokens'], 'token')}"
    )
    if "file" in result:
        lines.append(f"{result['file']}: perplexity {ppl:.3f}, {plain}, with {worded(result)}")
    else:
        lines.append(
            f"{result['split']} perplexity {ppl:.3f} with {worded(result)}; {plain} "
            f"({result['seconds']:.1f} s; plain {result['plain_seconds']:.1f} s) "
            f"{result['checkpoint']}"
        )
    return "\n".join(lines)
