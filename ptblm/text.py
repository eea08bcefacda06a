"""Scoring a text file of your own: `ptblm eval RUN --text FILE [--per-line] [--reset-each-line]`.

The file is tokenized the PTB way (data.py: every newline is `<eos>`, then a whitespace split);
a word the vocabulary lacks is read as `<unk>` and counted. Two ways to read the lines:

- carried (the default): the file is one stream, the state carried across lines, exactly the
  table's test protocol: the first token is context only, every later one is predicted once, so
  `--text ptb.test.txt` gives `ptblm eval`'s test perplexity. The model was trained and tested
  on sentences in sequence, so this is the reading its perplexity is comparable in.
- reset each line: every line is scored on its own from a zero state fed `<eos>` (what the model
  saw before every sentence in training); all its words and its closing `<eos>` are predicted
  (a last line without a newline too), and its score does not depend on the lines before it
  (reranking independent sentences).

The file is streamed: read a line at a time, scored a window (TEST_NUM_STEPS tokens) at a time,
each line's row handed on as soon as its last token is scored. Memory stays that of one window
and the lines it spans, whatever the file's size (holding a 50 MB file's tokens as Python lists
took 1.5 GB).
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ptblm.data import EOS, unreadable
from ptblm.download import open_regular_file
from ptblm.ensemble import average, member_logprobs, members_window
from ptblm.errors import DataError, quote
from ptblm.evaluate import TEST_NUM_STEPS
from ptblm.model import LSTMLanguageModel, perplexity

UNK = "<unk>"
CHUNK_BYTES = 1 << 20


def check_text(path: Path) -> None:
    """DataError for a missing, binary, non-UTF-8 or wordless file. Reads it in chunks and keeps
    none of it, so that a bad file is refused before anything loads, at no cost in memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_words = 0, False
    try:
        with open_regular_file(path) as file:  # never a FIFO, which would wait forever
            while True:
                chunk = file.read(CHUNK_BYTES)
                if b"\0" in chunk:
                    raise DataError(
                        f"{path} is a binary file: a text to score is UTF-8 text, one sentence a line."
                    )
                held = len(decoder.getstate()[0])  # a character split across chunks
                try:
                    text = decoder.decode(chunk, final=not chunk)
                except UnicodeDecodeError as error:
                    raise unreadable(path, error, offset - held) from None
                has_words = has_words or (text != "" and not text.isspace())
                if not chunk:
                    break
                offset += len(chunk)
    except OSError as error:
        raise unreadable(path, error) from None
    if not has_words:
        raise DataError(f"{path} has no words to score (it is empty or blank).")


def read_lines(path: Path) -> Iterator[str]:
    """The file's lines, one at a time, each with the newline that ends it (the last may have
    none). Split on b"\n" before decoding: in UTF-8 that byte is never part of a character. A
    byte-order mark (Windows editors write one) is no part of the first word."""
    with open(path, "rb") as file:
        for number, raw in enumerate(file):
            yield raw.decode("utf-8-sig" if number == 0 else "utf-8")


@dataclass
class Line:
    ids: list[int]  # the line's tokens, its closing <eos> included when a newline ends it
    words: int  # tokens that are words (not <eos>)
    unknown: list[str]  # words outside the vocabulary, read as <unk>


def word_ids(words: list[str], vocab: dict[str, int]) -> tuple[list[int], list[str]]:
    """Ids of the words, those outside the vocabulary read as <unk>, and which those were.
    The caller refuses unknown words when the vocabulary has no <unk>."""
    unknown = [word for word in words if word not in vocab]
    if unknown and UNK not in vocab:
        return [], unknown
    return [vocab[word] if word in vocab else vocab[UNK] for word in words], unknown


def to_line(number: int, text: str, vocab: dict[str, int]) -> Line:
    """Line `number` (0-based) of read_lines as ids."""
    words = text.split()
    ids, unknown = word_ids(words + ([EOS] if text.endswith("\n") else []), vocab)
    if unknown and not ids:
        raise DataError(
            f"line {number + 1} has {quote(unknown[0])}, which the model's vocabulary lacks, and "
            f"the vocabulary has no {UNK} to read it as: score text in that vocabulary."
        )
    return Line(ids, len(words), unknown)


def check_covered(lines: Iterable[str], vocab: dict[str, int]) -> None:
    """Without <unk> in the vocabulary an unknown word is an error: find it before anything is
    printed (with <unk>, nothing to do)."""
    if UNK not in vocab:
        for number, line in enumerate(lines):
            to_line(number, line, vocab)


@dataclass
class _Row:
    """A line waiting for the scores of its tokens."""

    number: int
    line: Line
    left: int  # predictions still to come
    logprob: float = 0.0
    tokens: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "line": self.number + 1,
            "words": self.line.words,
            "tokens": self.tokens,
            "logprob": self.logprob,
            "perplexity": perplexity(-self.logprob, self.tokens) if self.tokens else None,
            "unknown": self.line.unknown,
        }


@dataclass
class TextScorer:
    """Scores lines as they come (rows), then holds the text's summary (total)."""

    models: list[LSTMLanguageModel]
    vocab: dict[str, int]
    reset_each_line: bool = False
    device: torch.device | str = "cpu"
    total: dict[str, Any] = field(default_factory=dict)
    # One model reading with the cache and/or dynamic evaluation (adapt.Adaptation), carried only.
    adaptation: Any = None

    def rows(self, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
        """Each line's words, summed log-probability (natural log) and perplexity, in order;
        `total` is filled in when the last line is out."""
        if EOS not in self.vocab:
            raise DataError(f"the model's vocabulary has no {EOS}: it cannot read lines.")
        self._logprob, self._tokens, self._words, self._unknown = 0.0, 0, 0, 0
        self._members = torch.zeros(len(self.models), dtype=torch.float64)
        rows = self._each_line(lines) if self.reset_each_line else self._carried(lines)
        for row in rows:
            self._logprob += row.logprob
            self._tokens += row.tokens
            self._words += row.line.words
            self._unknown += len(row.line.unknown)
            yield row.as_dict()
        self.total = {
            "perplexity": perplexity(-self._logprob, self._tokens),
            "tokens": self._tokens,
            "logprob": self._logprob,
            "words": self._words,
            "unknown_words": self._unknown,
            "unknown_share": self._unknown / self._words if self._words else 0.0,
            "reset_each_line": self.reset_each_line,
        }
        if len(self.models) > 1:
            self.total["member_perplexities"] = [
                perplexity(-member, self._tokens) for member in self._members.tolist()
            ]

    def _each_line(self, lines: Iterable[str]) -> Iterator[_Row]:
        for number, text in enumerate(lines):
            if text.strip() and not text.endswith("\n"):  # a last line closes as the others do
                text += "\n"
            line = to_line(number, text, self.vocab)
            row = _Row(number, line, 0)
            if line.ids:
                ids = torch.tensor([[self.vocab[EOS], *line.ids]], device=self.device)
                logprobs = member_logprobs(self.models, ids, TEST_NUM_STEPS, True)[:, 0]
                self._members += logprobs.sum(dim=1)
                row.logprob, row.tokens = average(logprobs).sum().item(), logprobs.size(1)
            yield row

    def _carried(self, lines: Iterable[str]) -> Iterator[_Row]:
        """The lines as one stream, in the windows `evaluate` reads a split in: window k
        predicts tokens 500k+1 .. 500k+500 from the ones before, the state carried (with dynamic
        evaluation, windows of whole segments: Adaptation.window)."""
        states = [model.initial_state(1, self.device) for model in self.models]
        steps = self.adaptation.window if self.adaptation is not None else TEST_NUM_STEPS
        waiting: deque[_Row] = deque()
        stream: list[int] = []  # the tokens not yet read as a window's input
        seen = 0
        for number, text in enumerate(lines):
            line = to_line(number, text, self.vocab)
            first = seen == 0 and bool(line.ids)  # the stream's first token is context only
            waiting.append(_Row(number, line, len(line.ids) - first))
            stream.extend(line.ids)
            seen += len(line.ids)
            while len(stream) > steps:
                self._assign(waiting, self._window(states, stream[: steps + 1]))
                del stream[:steps]
            if seen >= 2:  # a one-token text is refused below, with nothing printed
                yield from _done(waiting)
        if seen < 2:
            raise DataError(
                "the text has one token: the first token is context only, so nothing is left to "
                "predict. Give it more words."
            )
        if len(stream) >= 2:
            self._assign(waiting, self._window(states, stream))
        yield from _done(waiting)

    @torch.no_grad()
    def _window(self, states: list, ids: list[int]) -> torch.Tensor:
        """(members, len(ids) - 1) log-probabilities of ids[1:], each given the ones before."""
        data = torch.tensor([ids], device=self.device)
        x, y = data[:, :-1], data[:, 1:]
        if self.adaptation is not None:
            logprobs, states[0] = self.adaptation.score(x, y, states[0])
            return logprobs[None]
        return members_window(self.models, states, x, y)[:, 0]

    def _assign(self, waiting: deque[_Row], logprobs: torch.Tensor) -> None:
        """Hand a window's scores to the lines they belong to, in order."""
        self._members += logprobs.sum(dim=1)
        averaged = average(logprobs)
        start = 0
        for row in waiting:
            if start == averaged.numel():
                break
            take = min(row.left, averaged.numel() - start)
            if take:
                row.logprob += averaged[start : start + take].sum().item()
                row.tokens, row.left, start = row.tokens + take, row.left - take, start + take


def _done(waiting: deque[_Row]) -> Iterator[_Row]:
    while waiting and waiting[0].left == 0:
        yield waiting.popleft()
