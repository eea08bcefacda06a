"""The data module against docs/reference.md's "Data" and "Batching"."""

from __future__ import annotations

import os
import re
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import PTB_FILES
from helpers import PTB_TOKENS

from ptblm.data import (
    batchify,
    build_vocab,
    load_corpus,
    num_windows,
    tokenize,
    windows,
)
from ptblm.errors import DataError

# --- tokens and vocabulary --------------------------------------------------------------------


def test_tokenize_turns_newlines_into_eos():
    assert tokenize("a b\nc\n") == ["a", "b", "<eos>", "c", "<eos>"]
    # PTB's layout: a leading space, a trailing space, then the newline.
    assert tokenize(" the cat \n sat  on \n") == ["the", "cat", "<eos>", "sat", "on", "<eos>"]
    assert tokenize("x\n\ny") == ["x", "<eos>", "<eos>", "y"]
    assert tokenize("word\tother word") == ["word", "other", "word"]
    assert tokenize("") == []


def test_build_vocab_descending_count_ties_by_word():
    words = "x b a b c a b <eos> c z N".split()
    # counts: b 3; a 2, c 2; <eos> 1, N 1, x 1, z 1 (ties in code-point order: '<' < 'N' < 'x')
    assert build_vocab(words) == {"b": 0, "a": 1, "c": 2, "<eos>": 3, "N": 4, "x": 5, "z": 6}


def test_build_vocab_ignores_input_order():
    assert build_vocab(["q", "p", "q", "p", "r"]) == {"p": 0, "q": 1, "r": 2}
    assert build_vocab(["p", "q", "p", "q", "r"]) == {"p": 0, "q": 1, "r": 2}


# --- truncated-BPTT windows -------------------------------------------------------------------


def bptt_batches(ids, batch_size, num_steps, partial=False):
    """The windows of a stream as the trainer and the evaluation cut them."""
    return list(windows(batchify(ids, batch_size), num_steps, partial=partial))


def test_windows_from_start_to_stop():
    every = bptt_batches(list(range(50)), 2, 4)  # 25 columns: 6 windows
    rows = batchify(list(range(50)), 2)
    for start, stop, expected in ((2, 5, every[2:5]), (0, None, every), (4, 99, every[4:])):
        cut = list(windows(rows, 4, start, stop))
        assert [(x.tolist(), y.tolist()) for x, y in cut] == [
            (x.tolist(), y.tolist()) for x, y in expected
        ]


def test_bptt_batches_hand_made_stream():
    batches = list(bptt_batches(list(range(26)), batch_size=2, num_steps=4))
    # batch_len 13; (13 - 1) // 4 = 3 windows. Row 0 is 0..12, row 1 is 13..25.
    expected = [
        ([[0, 1, 2, 3], [13, 14, 15, 16]], [[1, 2, 3, 4], [14, 15, 16, 17]]),
        ([[4, 5, 6, 7], [17, 18, 19, 20]], [[5, 6, 7, 8], [18, 19, 20, 21]]),
        ([[8, 9, 10, 11], [21, 22, 23, 24]], [[9, 10, 11, 12], [22, 23, 24, 25]]),
    ]
    assert len(batches) == 3
    for (x, y), (want_x, want_y) in zip(batches, expected, strict=True):
        assert x.dtype == torch.int64
        assert y.dtype == torch.int64
        assert x.tolist() == want_x
        assert y.tolist() == want_y


def test_bptt_batches_drops_tail_that_does_not_fill_a_column():
    # 27 ids at batch 2: the last one (26) is dropped, the layout is the same as for 26.
    assert [(x.tolist(), y.tolist()) for x, y in bptt_batches(list(range(27)), 2, 4)] == [
        (x.tolist(), y.tolist()) for x, y in bptt_batches(list(range(26)), 2, 4)
    ]


def test_bptt_batches_shapes_shift_and_continuity():
    ids = torch.randint(0, 50, (1003,), generator=torch.Generator().manual_seed(0))
    batch_size, num_steps = 3, 7
    batch_len = 1003 // 3  # 334
    rows = ids[: batch_size * batch_len].view(batch_size, batch_len)
    batches = list(bptt_batches(ids, batch_size, num_steps))
    assert len(batches) == (batch_len - 1) // num_steps == 47
    for i, (x, y) in enumerate(batches):
        assert x.shape == (batch_size, num_steps)
        assert y.shape == (batch_size, num_steps)
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        # y is x shifted by one token.
        assert torch.equal(y[:, :-1], x[:, 1:])
        # Row r is the r-th contiguous chunk of the stream.
        assert torch.equal(x, rows[:, i * num_steps : (i + 1) * num_steps])
        assert torch.equal(y, rows[:, i * num_steps + 1 : (i + 1) * num_steps + 1])
        if i:
            # Row r of window i continues row r of window i - 1.
            previous_y = batches[i - 1][1]
            assert torch.equal(x[:, 0], previous_y[:, -1])
    # Concatenated, the windows of each row are that row's contiguous text.
    joined = torch.cat([x for x, _ in batches], dim=1)
    assert torch.equal(joined, rows[:, : len(batches) * num_steps])


def test_bptt_batches_accepts_a_list_or_a_tensor():
    from_list = list(bptt_batches(list(range(26)), 2, 4))
    for ids in (torch.arange(26), torch.arange(26, dtype=torch.int32)):
        from_tensor = list(bptt_batches(ids, 2, 4))
        assert len(from_tensor) == len(from_list)
        for (x1, y1), (x2, y2) in zip(from_list, from_tensor, strict=True):
            assert x2.dtype == torch.int64 and y2.dtype == torch.int64
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.parametrize("length, num_steps", [(23, 5), (21, 5), (2, 5), (10, 1), (100, 35)])
def test_partial_windows_predict_every_token_once(length, num_steps):
    ids = list(range(100, 100 + length))
    batches = list(bptt_batches(ids, 1, num_steps, partial=True))
    assert len(batches) == -(-(length - 1) // num_steps)  # ceil((length - 1) / num_steps)
    for x, y in batches:
        assert 1 <= x.size(1) <= num_steps
        assert x.shape == y.shape
        assert x.size(0) == 1
    targets = [t for _, y in batches for t in y[0].tolist()]
    inputs = [t for x, _ in batches for t in x[0].tolist()]
    assert targets == ids[1:]
    assert inputs == ids[:-1]


def test_partial_adds_only_the_last_shorter_window():
    full = list(bptt_batches(list(range(23)), 1, 5))
    with_partial = list(bptt_batches(list(range(23)), 1, 5, partial=True))
    assert len(full) == 4
    assert len(with_partial) == 5
    for (x1, y1), (x2, y2) in zip(full, with_partial[:-1], strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, y = with_partial[-1]
    assert x.tolist() == [[20, 21]]
    assert y.tolist() == [[21, 22]]


def test_num_windows():
    assert num_windows(13, 4) == 3
    assert num_windows(13, 4, partial=True) == 3  # 12 predictions fill 3 windows exactly
    assert num_windows(14, 4) == 3
    assert num_windows(14, 4, partial=True) == 4
    assert num_windows(5, 4) == 1
    assert num_windows(4, 4) == 0
    assert num_windows(4, 4, partial=True) == 1


@pytest.mark.parametrize(
    "ids, batch_size", [([], 1), ([7], 1), ([0, 1, 2], 2), (list(range(39)), 20)]
)
def test_too_short_input_raises(ids, batch_size):
    with pytest.raises(DataError):
        list(bptt_batches(ids, batch_size, 1))
    with pytest.raises(DataError):
        batchify(ids, batch_size)


# --- the real PTB files -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ptb(ptb_dir):
    """The real corpus, loaded once for this module (`make bench` reports how long that takes)."""
    return SimpleNamespace(corpus=load_corpus(corpus_dir=ptb_dir))


def test_ptb_vocabulary(ptb):
    vocab = ptb.corpus.vocab
    assert len(vocab) == 10_000
    assert vocab["the"] == 0
    assert vocab["<unk>"] == 1
    assert vocab["<eos>"] == 2
    assert vocab["N"] == 3
    assert vocab["of"] == 4
    assert sorted(vocab.values()) == list(range(10_000))


def test_ptb_token_counts(ptb):
    for split, count in PTB_TOKENS.items():
        ids = ptb.corpus.split(split)
        assert ids.dtype == torch.int64
        assert ids.dim() == 1
        assert ids.numel() == count, split
        assert 0 <= int(ids.min()) and int(ids.max()) < 10_000


def test_ptb_stream_starts_and_ends_like_the_file(ptb, ptb_dir):
    vocab = ptb.corpus.vocab
    first_line = (ptb_dir / "ptb.valid.txt").read_text(encoding="utf-8").split("\n", 1)[0]
    words = first_line.split() + ["<eos>"]
    assert ptb.corpus.valid[: len(words)].tolist() == [vocab[w] for w in words]
    assert int(ptb.corpus.train[-1]) == vocab["<eos>"]


@pytest.mark.parametrize("batch_size, num_steps, windows", [(20, 20, 2_323), (20, 35, 1_327)])
def test_ptb_windows_per_epoch(ptb, batch_size, num_steps, windows):
    train = ptb.corpus.train
    batch_len = train.numel() // batch_size
    assert num_windows(batch_len, num_steps) == windows
    count = 0
    for x, y in bptt_batches(train, batch_size, num_steps):
        count += 1
        assert x.shape == y.shape == (batch_size, num_steps)
    assert count == windows


def test_ptb_test_protocol_predicts_every_token_but_the_first(ptb):
    # batch_size 1, with the last partial window: 82,430 - 1 predictions (docs/reference.md).
    predicted = sum(y.numel() for _, y in bptt_batches(ptb.corpus.test, 1, 35, partial=True))
    assert predicted == 82_429


# --- corpora of your own ----------------------------------------------------------------------


def test_tiny_corpus_loads(tiny_corpus):
    corpus = load_corpus(corpus_dir=tiny_corpus)
    # Counts (conftest): the 6, <eos> 4, a/cat/dog/on 3, mat/sat 2, and/log/saw 1.
    assert corpus.vocab == {
        "the": 0, "<eos>": 1, "a": 2, "cat": 3, "dog": 4, "on": 5,
        "mat": 6, "sat": 7, "and": 8, "log": 9, "saw": 10,
    }  # fmt: skip
    assert corpus.train.numel() == 29
    assert corpus.valid.tolist() == [0, 3, 7, 5, 0, 9, 1]  # the cat sat on the log <eos>
    assert corpus.test.tolist() == [2, 4, 7, 5, 0, 6, 1]  # a dog sat on the mat <eos>
    assert corpus.custom is True
    assert corpus.is_ptb is False  # the published table says nothing of runs on it


def test_a_copy_of_ptb_given_as_a_corpus_is_ptb_and_one_with_a_word_changed_is_not(ptb, tmp_path):
    """`--corpus ../shared/ptb` is PTB: its run is compared with the published row. The same
    vocabulary with one line of the test split changed is another text."""
    assert ptb.corpus.custom and ptb.corpus.is_ptb
    edited = tmp_path / "edited"
    edited.mkdir()
    for name in PTB_FILES:  # the files alone: whatever else lies beside them is not PTB
        shutil.copy(ptb.corpus.folder / name, edited)
    test = (edited / "ptb.test.txt").read_text()
    (edited / "ptb.test.txt").write_text(test.replace(" the ", " of ", 1))
    assert load_corpus(corpus_dir=edited).is_ptb is False


@pytest.mark.parametrize("name", ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"])
@pytest.mark.parametrize("content", [b"", b"  \t \r "])
def test_empty_corpus_file(tiny_corpus, name, content):
    (tiny_corpus / name).write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        load_corpus(corpus_dir=tiny_corpus)
    assert name in str(excinfo.value)
    assert "empty" in str(excinfo.value)


def test_non_utf8_corpus_file(tiny_corpus):
    (tiny_corpus / "ptb.train.txt").write_bytes(b"the cat \xe9t\xe9 here\n")  # Latin-1 bytes
    with pytest.raises(DataError) as excinfo:
        load_corpus(corpus_dir=tiny_corpus)
    assert "ptb.train.txt" in str(excinfo.value)
    assert "UTF-8" in str(excinfo.value)


@pytest.mark.parametrize("name", ["ptb.valid.txt", "ptb.test.txt"])
def test_word_outside_the_training_vocabulary(tiny_corpus, name):
    (tiny_corpus / name).write_text("the cat sat on the zebra\n", encoding="utf-8")
    with pytest.raises(DataError) as excinfo:
        load_corpus(corpus_dir=tiny_corpus)
    assert name in str(excinfo.value)
    assert "zebra" in str(excinfo.value)


def test_missing_file_in_corpus_dir(tiny_corpus):
    (tiny_corpus / "ptb.test.txt").unlink()
    with pytest.raises(DataError) as excinfo:
        load_corpus(corpus_dir=tiny_corpus)
    assert "ptb.test.txt" in str(excinfo.value)


def test_missing_corpus_dir(tmp_path):
    missing = tmp_path / "no_such_corpus"
    with pytest.raises(DataError) as excinfo:
        load_corpus(corpus_dir=missing)
    assert "no_such_corpus" in str(excinfo.value)
    assert not missing.exists()
    (tmp_path / "ptb.train.txt").write_text("the cat\n")  # one of the files, not its folder
    with pytest.raises(DataError, match="ptb.train.txt is a file: give the directory that holds"):
        load_corpus(corpus_dir=tmp_path / "ptb.train.txt")


def test_corpus_files_and_texts_to_score_are_refused_in_the_same_words(tmp_path):
    from ptblm.data import read_split
    from ptblm.text import check_text

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(b"the caf\xe9 <eos>\n")
    missing = tmp_path / "missing.txt"
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)  # read as a file, it waited for a writer forever
    for path, reason in (
        (latin1, "is not UTF-8 text (byte 7"),
        (missing, "no such file"),
        (fifo, "(not a regular file)"),
        (tmp_path, "(not a regular file)"),
    ):
        with pytest.raises(DataError, match=re.escape(reason)) as corpus_error:
            read_split(path)
        with pytest.raises(DataError) as text_error:
            check_text(path)
        assert str(corpus_error.value) == str(text_error.value)
