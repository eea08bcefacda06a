"""Scoring a text file of your own: `ptblm eval RUN --text FILE [--per-line] [--reset-each-line]`.

The file is tokenized the PTB way (data.py: every newline is `<eos>`, then a whitespace split);
a word the vocabulary lacks is read as `<unk>` and counted. Two ways to read the lines:

- carried (the default): the file is one stream, the state carried across lines, exactly the
  table's test protocol: the first token is context only, every later one is predicted once, so
  `--text ptb.test.txt` gives `ptblm eval`'s test perplexity. The model was trained and tested
  on sentences in sequence, so this is the reading its perplexity is comparable in.
- reset each line: every line is scored on its own from a zero state fed `<eos>` (what the model
  saw before every sentence in training); all its words and its closing `<eos>` are predicted,
  and its score does not depend on the lines before it (reranking independent sentences).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ptblm.data import EOS
from ptblm.ensemble import average, member_logprobs
from ptblm.errors import DataError
from ptblm.evaluate import TEST_NUM_STEPS, perplexity
from ptblm.model import LSTMLanguageModel

UNK = "<unk>"


def read_text(path: Path) -> str:
    """The file's text; DataError for a missing, binary, non-UTF-8 or wordless file."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file.") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}).") from None
    if b"\0" in data:
        raise DataError(f"{path} is a binary file: --text takes UTF-8 text, one sentence a line.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}). Convert it, e.g. "
            f"with iconv -t UTF-8."
        ) from None
    if not text.split():
        raise DataError(f"{path} has no words to score (it is empty or blank).")
    return text


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


def split_lines(text: str, vocab: dict[str, int]) -> list[Line]:
    """The file's lines as ids; together they are exactly tokenize(text)."""
    parts, newlines = text.split("\n"), text.count("\n")
    if parts[-1] == "":
        parts.pop()  # the newline that ends the file ends its last line
    lines = []
    for number, part in enumerate(parts):
        words = part.split()
        tokens = words + ([EOS] if number < newlines else [])
        ids, unknown = word_ids(tokens, vocab)
        if unknown and not ids:
            raise DataError(
                f"line {number + 1} has {unknown[0]!r}, which the model's vocabulary lacks, and "
                f"the vocabulary has no {UNK} to read it as: score text in that vocabulary."
            )
        lines.append(Line(ids, len(words), unknown))
    return lines


def score_text(
    models: list[LSTMLanguageModel],
    vocab: dict[str, int],
    text: str,
    reset_each_line: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Perplexity of the text under the model (or the ensemble of the models), and each line's
    words, summed log-probability (natural log) and perplexity."""
    if EOS not in vocab:
        raise DataError(f"the model's vocabulary has no {EOS}: it cannot read lines.")
    lines = split_lines(text, vocab)
    if reset_each_line:
        per_line = [
            member_logprobs(
                models, torch.tensor([[vocab[EOS], *line.ids]], device=device), TEST_NUM_STEPS, True
            )[:, 0]
            if line.ids
            else torch.zeros(len(models), 0, dtype=torch.float64)
            for line in lines
        ]
    else:
        stream = torch.tensor([[i for line in lines for i in line.ids]], device=device)
        if stream.size(1) < 2:
            raise DataError(
                "the text has one token: the first token is context only, so nothing is left to "
                "predict. Give it more words, or use --reset-each-line."
            )
        scored = member_logprobs(models, stream, TEST_NUM_STEPS, True)[:, 0]
        scored = torch.cat([torch.zeros(len(models), 1, dtype=torch.float64), scored], dim=1)
        ends = torch.tensor([len(line.ids) for line in lines]).cumsum(0).tolist()
        per_line = [scored[:, start:end] for start, end in zip([0, *ends], ends, strict=False)]
        per_line[0] = per_line[0][:, 1:]  # the first token is not predicted
    rows = []
    for number, (line, logprobs) in enumerate(zip(lines, per_line, strict=True)):
        logprob = average(logprobs).sum().item()
        rows.append(
            {
                "line": number + 1,
                "words": line.words,
                "tokens": logprobs.size(1),
                "logprob": logprob,
                "perplexity": perplexity(-logprob, logprobs.size(1)) if logprobs.size(1) else None,
                "unknown": line.unknown,
            }
        )
    everything = torch.cat(per_line, dim=1)
    tokens, words = everything.size(1), sum(line.words for line in lines)
    unknown = sum(len(line.unknown) for line in lines)
    logprob = average(everything).sum().item()
    total: dict[str, Any] = {
        "perplexity": perplexity(-logprob, tokens),
        "tokens": tokens,
        "logprob": logprob,
        "words": words,
        "unknown_words": unknown,
        "unknown_share": unknown / words if words else 0.0,
        "reset_each_line": reset_each_line,
    }
    if len(models) > 1:
        total["member_perplexities"] = [perplexity(-lp.sum().item(), tokens) for lp in everything]
    return total, rows
