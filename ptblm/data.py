"""The corpus: tokenize, number, and cut into truncated-BPTT windows (download.py fetches PTB).

Everything here is exactly docs/reference.md's "Data" and "Batching":
- every newline becomes the token `<eos>`, then the text is split on whitespace;
- the vocabulary is every word of the training split, ids by descending count, ties by the word
  (`the`=0, `<unk>`=1, `<eos>`=2 on PTB);
- a split's id stream is laid out as `batch_size` contiguous rows and read in windows of
  `num_steps` columns, the LSTM state carried from one window to the next.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ptblm.config import Config
from ptblm.distributed import Distributed
from ptblm.download import (
    DEFAULT_DATA_DIR,
    SHA256,
    SPLITS,
    download_ptb,
    open_regular_file,
    sha256_of,
)
from ptblm.errors import ConfigError, DataError, counted

EOS = "<eos>"


def file_name(split: str) -> str:
    return f"ptb.{split}.txt"


def tokenize(text: str) -> list[str]:
    """Every newline becomes `<eos>`, then split on whitespace (docs/reference.md)."""
    return text.replace("\n", f" {EOS} ").split()


def build_vocab(words: Sequence[str]) -> dict[str, int]:
    """Word -> id for every distinct word: descending count, ties broken by the word itself.

    >>> build_vocab("b a b c <eos>".split())
    {'b': 0, '<eos>': 1, 'a': 2, 'c': 3}
    """
    counts = collections.Counter(words)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: index for index, (word, _) in enumerate(ordered)}


def unreadable(path: Path, error: OSError | UnicodeDecodeError, offset: int = 0) -> DataError:
    """The DataError for a text file that is missing, unreadable or not UTF-8 (`offset`: where
    the decoded bytes began in the file)."""
    if isinstance(error, UnicodeDecodeError):
        return DataError(
            f"{path} is not UTF-8 text (byte {offset + error.start}: {error.reason}). "
            f"Convert it, e.g. with iconv -t UTF-8."
        )
    if isinstance(error, FileNotFoundError):
        return DataError(f"{path}: no such file.")
    return DataError(
        f"cannot read {path} ({error.strerror or error}): it must be a readable file; check its "
        f"permissions, or put the file itself there."
    )


def read_split(path: Path) -> list[str]:
    """The tokens of one corpus file; DataError if missing, unreadable, not UTF-8 or empty."""
    try:
        with open_regular_file(path) as file:
            text = file.read().decode("utf-8-sig")  # a byte-order mark is no part of a word
    except (OSError, UnicodeDecodeError) as error:
        raise unreadable(path, error) from None
    words = tokenize(text)
    if not words:
        raise DataError(f"{path} is empty: a corpus file needs at least one sentence.")
    return words


def numericalize(words: Sequence[str], vocab: Mapping[str, int], path: Path) -> torch.Tensor:
    """Words -> 1-D int64 tensor of ids; DataError naming the first word outside the vocabulary."""
    try:
        return torch.tensor([vocab[word] for word in words], dtype=torch.int64)
    except KeyError:
        unknown = sorted({word for word in words if word not in vocab})
        shown = ", ".join(repr(word) for word in unknown[:5])
        raise DataError(
            f"{path} has {counted(len(unknown), 'word')} that the vocabulary does not have ({shown}"
            f"{', ...' if len(unknown) > 5 else ''}). The vocabulary is every word of the training "
            f"split: map rare words to <unk> there and in the other splits, as PTB does."
        ) from None


@dataclass(frozen=True)
class Corpus:
    """The vocabulary (word -> id) and each split as a 1-D int64 tensor of ids."""

    vocab: dict[str, int]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    folder: Path
    custom: bool = False  # a corpus of the user's own (--corpus), not the verified PTB

    def split(self, name: str) -> torch.Tensor:
        return getattr(self, name)

    @functools.cached_property
    def is_ptb(self) -> bool:
        """The real PTB files (a download is verified; a --corpus copy is checked here): the
        published table speaks of runs on these only."""
        if not self.custom:
            return True
        try:
            return all(sha256_of(self.folder / name) == digest for name, digest in SHA256.items())
        except OSError:
            return False

    @functools.cached_property
    def fingerprints(self) -> dict[str, str]:
        """sha256 of each split's ids: a resumed run must see the very text it started with."""
        return {name: hashlib.sha256(self.split(name).numpy().tobytes()).hexdigest()
                for name in SPLITS}  # fmt: skip


def load_corpus(
    data_dir: str | os.PathLike = DEFAULT_DATA_DIR,
    corpus_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Corpus:
    """Load PTB (downloaded into data_dir on demand, checksums verified) or, with corpus_dir, a
    corpus of your own in the same layout (ptb.train.txt, ptb.valid.txt, ptb.test.txt; no checksum).

    The vocabulary is built from the training split (build_vocab).
    """
    if corpus_dir is not None:
        folder = Path(corpus_dir)
        if folder.exists() and not folder.is_dir():
            raise DataError(
                f"--corpus {folder} is a file: give the directory that holds ptb.train.txt, "
                f"ptb.valid.txt and ptb.test.txt."
            )
        if not folder.is_dir():
            raise DataError(f"{folder}: no such corpus directory.")
    else:
        folder = download_ptb(data_dir, progress=progress)
    words = {split: read_split(folder / file_name(split)) for split in SPLITS}
    vocab = build_vocab(words["train"])
    ids = {split: numericalize(words[split], vocab, folder / file_name(split)) for split in SPLITS}
    return Corpus(vocab=vocab, folder=folder, custom=corpus_dir is not None, **ids)


def load_corpus_on_all_ranks(
    data_dir, corpus_dir, dist: Distributed, device: torch.device, verbose: bool
) -> Corpus:
    """Every rank loads the corpus; rank 0 downloads it first, the others wait for it and stop
    with it if it fails (a collective under torchrun)."""
    if dist.enabled:
        failure = None
        if dist.is_main and corpus_dir is None:
            try:
                download_ptb(data_dir, progress=verbose)
            except DataError as error:
                failure = error
        dist.raise_if_failed(failure, device, "download the corpus")
    return load_corpus(data_dir, corpus_dir, progress=verbose and dist.is_main)


def check_corpus_fits(
    config: Config, corpus: Corpus, world_size: int, eval_tokens: int | None = None
) -> None:
    """Refuse, before any training, a corpus or a process count that does not fit the config:
    each split needs one window (the test split: batch_size 1, the table's protocol), and so
    does the prefix that `eval_tokens` (--eval-tokens) validates on, which must be a prefix of
    one split at least."""
    least = config.batch_size * (config.num_steps + 1)  # one validation window
    if eval_tokens is not None and eval_tokens < least:
        raise ConfigError(
            f"--eval-tokens {eval_tokens}: validation needs one window of batch_size x "
            f"(num_steps + 1) = {least} tokens at least."
        )
    valid, test = corpus.valid.numel(), corpus.test.numel()
    if eval_tokens is not None and eval_tokens >= max(valid, test):
        raise ConfigError(
            f"--eval-tokens {eval_tokens}: the valid and test splits hold {valid:,} and "
            f"{test:,} tokens, so they would be evaluated whole, yet the run would be marked as "
            f"tested on a prefix. Leave --eval-tokens out to evaluate them whole."
        )
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} does not divide by the {world_size} processes: each "
            f"trains an equal share of the rows. Use --set batch_size=N with N a multiple of "
            f"{world_size}, or another --nproc_per_node."
        )
    if len(corpus.vocab) != config.vocab_size:
        raise DataError(
            f"the training split of {corpus.folder} has {len(corpus.vocab)} distinct words but "
            f"vocab_size is {config.vocab_size}. Use --set vocab_size={len(corpus.vocab)}."
        )
    for split, batch_size, num_steps in (
        ("train", config.batch_size, config.num_steps),
        ("valid", config.batch_size, config.num_steps),
        ("test", 1, 1),
    ):
        ids = corpus.split(split)
        if ids.numel() // batch_size < num_steps + 1:
            raise DataError(
                f"the {split} split of {corpus.folder} has {counted(ids.numel(), 'token')}: too "
                f"few for one window of batch_size {batch_size} x num_steps {num_steps}."
            )


def batchify(ids: torch.Tensor | Sequence[int], batch_size: int) -> torch.Tensor:
    """Lay a 1-D id stream out as `batch_size` contiguous rows: shape (batch_size, batch_len).

    The tail that does not fill a whole column (fewer than batch_size ids) is dropped.
    """
    ids = torch.as_tensor(ids, dtype=torch.int64)
    batch_len = ids.numel() // batch_size
    if batch_len < 2:
        raise DataError(
            f"batch_size {batch_size} needs {2 * batch_size} tokens at least (each row one input "
            f"and one target), and there {'is' if ids.numel() == 1 else 'are'} "
            f"{counted(ids.numel(), 'token')}."
        )
    return ids[: batch_size * batch_len].view(batch_size, batch_len)


def num_windows(batch_len: int, num_steps: int, partial: bool = False) -> int:
    """Windows in one pass over rows of batch_len ids: (batch_len - 1) // num_steps, or rounded up
    with `partial` (the last, shorter window included, as the test protocol needs)."""
    if partial:
        return -(-(batch_len - 1) // num_steps)
    return (batch_len - 1) // num_steps


def windows(
    data: torch.Tensor,
    num_steps: int,
    start: int = 0,
    stop: int | None = None,
    partial: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The truncated-BPTT windows (x, y) of a batchified (batch_size, batch_len) matrix, each
    (batch_size, num_steps), from window `start` to window `stop` (excluded; None: the last).

    batchify cuts the stream into batch_size contiguous rows; window i is columns
    [i*n, (i+1)*n) of them, and its targets the same columns shifted one token to the right.
    E.g. the stream
    0..25 with batch_size 2, num_steps 4 (batch_len 13, (13 - 1) // 4 = 3 windows):

                    window 0       window 1       window 2
        row 0:  x [ 0  1  2  3] [ 4  5  6  7] [ 8  9 10 11]  (12 only ever a target)
                y [ 1  2  3  4] [ 5  6  7  8] [ 9 10 11 12]
        row 1:  x [13 14 15 16] [17 18 19 20] [21 22 23 24]
                y [14 15 16 17] [18 19 20 21] [22 23 24 25]

    Row r of window i+1 continues row r of window i, so the LSTM state at the end of window i
    (one per row) is the right initial state for window i+1: the trainer carries it across
    windows (detached, so gradients stop at the window edge) and zeroes it once per epoch.

    With `partial`, a last shorter window covers the columns left over, so every token of every
    row but the first is predicted exactly once (the test protocol with batch_size 1).

    x and y are views (no copy), so the matrix can live on the GPU and be cut there.
    """
    batch_len = data.size(1)
    last = num_windows(batch_len, num_steps, partial)
    for i in range(start, last if stop is None else min(stop, last)):
        begin = i * num_steps
        end = min(begin + num_steps, batch_len - 1)
        yield data[:, begin:end], data[:, begin + 1 : end + 1]
