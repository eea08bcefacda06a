import math
import random

import pytest
import torch
from helpers import score_text, split_lines

from ptblm.data import build_vocab, tokenize
from ptblm.errors import DataError
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel, perplexity
from ptblm.text import check_text

TRAIN = "the cat sat on the mat\nthe dog sat on the log\n<unk> dog saw a cat\n"
VOCAB = build_vocab(tokenize(TRAIN))
TEXT = "the cat saw a dog\n\nthe zebra sat on a mat\nthe end\n"  # zebra, end: unknown


def model(seed=0):
    torch.manual_seed(seed)
    return LSTMLanguageModel(len(VOCAB), 10, num_layers=1, keep_prob=1.0, init_scale=0.5).eval()


def ids_of(words):
    return torch.tensor([VOCAB.get(word, VOCAB["<unk>"]) for word in words])


@pytest.mark.parametrize("text", [TEXT, TEXT.rstrip("\n"), "one\n\n\ntwo three", "\n"])
def test_lines_together_are_the_ptb_tokenization(text):
    vocab = {word: i for i, word in enumerate(sorted(set(tokenize(text))))}
    lines = split_lines(text, vocab)
    assert [i for line in lines for i in line.ids] == [vocab[word] for word in tokenize(text)]


def test_carried_scoring_is_the_test_protocol_and_lines_sum_to_the_total():
    total, lines = score_text([model()], VOCAB, TEXT)
    words = tokenize(TEXT)
    nll, tokens = evaluate(model(), ids_of(words), batch_size=1, num_steps=3)
    assert total["tokens"] == tokens == len(words) - 1  # the first token is context only
    assert total["perplexity"] == pytest.approx(perplexity(nll, tokens), rel=1e-6)
    assert sum(line["logprob"] for line in lines) == pytest.approx(total["logprob"], rel=1e-9)
    assert sum(line["tokens"] for line in lines) == total["tokens"]
    assert [line["tokens"] for line in lines] == [5, 1, 7, 3]  # line 1: "the" is not predicted
    assert lines[1]["unknown"] == [] and lines[2]["unknown"] == ["zebra"]
    assert total["unknown_words"] == 2 and total["words"] == 13
    assert total["unknown_share"] == pytest.approx(2 / 13)


def test_reset_each_line_scores_every_line_on_its_own():
    """Each line from a fresh state fed <eos>: the same in any order and context, and equal to
    running that line alone."""
    _, lines = score_text([model()], VOCAB, TEXT, reset_each_line=True)
    _, swapped = score_text([model()], VOCAB, "the end\n" + TEXT, reset_each_line=True)
    assert [line["tokens"] for line in lines] == [6, 1, 7, 3]  # every word and its <eos>
    for ours, theirs in zip(lines, swapped[1:], strict=True):
        assert ours["logprob"] == pytest.approx(theirs["logprob"], rel=1e-9)
    assert lines[3]["logprob"] == pytest.approx(swapped[0]["logprob"], rel=1e-9)
    # the last line, without its newline, still ends with a predicted <eos>
    _, unclosed = score_text([model()], VOCAB, TEXT.removesuffix("\n"), reset_each_line=True)
    assert unclosed == lines
    alone = ["<eos>", "the", "zebra", "sat", "on", "a", "mat", "<eos>"]
    nll, _ = evaluate(model(), ids_of(alone), batch_size=1, num_steps=100)
    assert lines[2]["logprob"] == pytest.approx(-nll, rel=1e-6)
    assert lines[2]["perplexity"] == pytest.approx(math.exp(nll / 7), rel=1e-6)


def test_an_ensemble_scores_text_with_each_members_perplexity():
    total, _ = score_text([model(0), model(1)], VOCAB, TEXT)
    alone = [score_text([model(seed)], VOCAB, TEXT)[0]["perplexity"] for seed in (0, 1)]
    assert total["member_perplexities"] == pytest.approx(alone, rel=1e-9)


def test_text_outside_a_vocabulary_without_unk(tmp_path):
    with pytest.raises(DataError, match="'zebra'.*no <unk>"):
        split_lines("a zebra\n", {"a": 0, "<eos>": 1})


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "has no words to score"),
        (b" \n\n \t\n", "has no words to score"),
        (b"the cat\x00\x01\x02", "is a binary file"),
        (b"caf\xe9 au lait\n", r"is not UTF-8 text \(byte 3"),
    ],
)
def test_unreadable_text_is_refused(tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        check_text(path)


def test_a_one_token_text_has_nothing_to_predict_unless_reset():
    with pytest.raises(DataError, match="one token"):
        score_text([model()], VOCAB, "cat")
    total, _ = score_text([model()], VOCAB, "cat", reset_each_line=True)
    assert total["tokens"] == 2  # "cat" and the <eos> that closes it, each from what precedes


def test_a_file_is_scored_as_it_is_read():
    """The first line's row comes out after the lines of one window have been read, not after
    the whole file: a 50 MB file took 1.5 GB when it was all held."""
    from ptblm.text import TextScorer

    read = []

    def lines():
        for number in range(100_000):
            read.append(number)
            yield "the cat sat on the mat\n"

    rows = TextScorer([model()], VOCAB).rows(lines())
    first = next(rows)
    assert first["line"] == 1 and first["tokens"] == 6
    assert len(read) <= 500 // 7 + 2  # one window of 500 tokens, 7 tokens a line


def test_streamed_windows_give_what_the_whole_stream_gives():
    """Lines across window edges get their scores from both windows; every token's score is the
    one member_logprobs gives over the whole stream in the same windows."""
    from ptblm.ensemble import average, member_logprobs

    rng = random.Random(1)
    words = ["the", "cat", "sat", "on", "mat", "zebra"]
    text = "".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 30))) + "\n" for _ in range(150)
    )
    models = [model(0), model(1)]
    total, lines = score_text(models, VOCAB, text)
    stream = torch.tensor([[i for line in split_lines(text, VOCAB) for i in line.ids]])
    assert stream.size(1) > 3 * 500  # several windows
    expected = member_logprobs(models, stream, 500, True)[:, 0]
    assert total["tokens"] == expected.size(1) == sum(line["tokens"] for line in lines)
    assert total["logprob"] == pytest.approx(average(expected).sum().item(), rel=1e-12)
    ends = torch.tensor([line["tokens"] for line in lines]).cumsum(0).tolist()
    for line, start, end in zip(lines, [0, *ends[:-1]], ends, strict=True):
        assert line["logprob"] == pytest.approx(average(expected[:, start:end]).sum().item(), 1e-12)
    members = [perplexity(-lp.sum().item(), expected.size(1)) for lp in expected]
    assert total["member_perplexities"] == pytest.approx(members, rel=1e-12)


def test_a_file_is_checked_in_chunks(tmp_path, monkeypatch):
    """A character split across two chunks is read whole; a bad byte is placed in the file."""
    import ptblm.text as text_module

    monkeypatch.setattr(text_module, "CHUNK_BYTES", 3)
    path = tmp_path / "input.txt"
    path.write_bytes(" \n  caf\xc3\xa9 \xe2\x82\xac\n".encode("latin-1"))
    check_text(path)  # é and € straddle the 3-byte chunks
    path.write_bytes(b"      \n  \t \n" + b"word\n")
    check_text(path)  # the words start after the first chunks
    path.write_bytes(b"the caf\xc3\xa9 au \xe9 lait\n")
    with pytest.raises(DataError, match=r"is not UTF-8 text \(byte 13"):
        check_text(path)
    path.write_bytes(b"the cat " + b"\0" + b"sat\n")
    with pytest.raises(DataError, match="is a binary file"):
        check_text(path)


def test_a_byte_order_mark_is_no_part_of_the_first_word(tmp_path):
    """A file saved by a Windows editor opens with U+FEFF: its first word was unknown."""
    from ptblm.data import read_split
    from ptblm.text import read_lines

    path = tmp_path / "input.txt"
    path.write_bytes("\ufeffthe cat sat\nthe \ufeffdog\n".encode())
    check_text(path)
    assert list(read_lines(path)) == ["the cat sat\n", "the \ufeffdog\n"]  # only at the start
    assert read_split(path)[:3] == ["the", "cat", "sat"]
