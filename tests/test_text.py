import math

import pytest
import torch

from ptblm.data import build_vocab, tokenize
from ptblm.errors import DataError
from ptblm.evaluate import evaluate, perplexity
from ptblm.model import LSTMLanguageModel
from ptblm.text import read_text, score_text, split_lines

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
        read_text(path)


def test_a_one_token_text_has_nothing_to_predict_unless_reset():
    with pytest.raises(DataError, match="one token"):
        score_text([model()], VOCAB, "cat")
    total, _ = score_text([model()], VOCAB, "cat", reset_each_line=True)
    assert total["tokens"] == 1
