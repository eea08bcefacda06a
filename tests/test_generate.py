import random

import pytest
import torch
from helpers import as_text

from ptblm.errors import CheckpointError, ConfigError
from ptblm.generate import sample
from ptblm.model import LSTMLanguageModel


def generate_ids(*args, **kwargs) -> list[int]:
    """Every id `sample` draws, at once."""
    return list(sample(*args, **kwargs))


VOCAB = {word: i for i, word in enumerate(["the", "<unk>", "<eos>", "cat", "sat", "mat", "on"])}


def model():
    torch.manual_seed(0)
    return LSTMLanguageModel(len(VOCAB), 8, num_layers=2, keep_prob=0.5, init_scale=1.0)


def test_the_same_seed_gives_the_same_words():
    one = generate_ids(model(), VOCAB, [VOCAB["the"]], words=50, seed=7)
    assert one == generate_ids(model(), VOCAB, [VOCAB["the"]], words=50, seed=7)
    assert one != generate_ids(model(), VOCAB, [VOCAB["the"]], words=50, seed=8)
    assert len(one) == 50 and set(one) <= set(VOCAB.values())


def test_top_k_1_is_greedy_decoding():
    """Against a greedy loop written here: feed <eos> and the prompt, then the argmax."""
    net = model().eval()
    sampled = generate_ids(net, VOCAB, [VOCAB["cat"]], words=10, top_k=1, seed=1)
    with torch.no_grad():
        logits, state = net(torch.tensor([[VOCAB["<eos>"], VOCAB["cat"]]]), None)
        greedy = []
        for _ in range(10):
            greedy.append(int(logits[0, -1].argmax()))
            logits, state = net(torch.tensor([[greedy[-1]]]), state)
    assert sampled == greedy


def test_top_k_draws_only_among_the_likeliest():
    net = model().eval()
    with torch.no_grad():
        logits, _ = net(torch.tensor([[VOCAB["<eos>"]]]), None)
    likeliest = set(torch.topk(logits[0, -1], 2).indices.tolist())
    firsts = {generate_ids(net, VOCAB, [], words=1, top_k=2, seed=seed)[0] for seed in range(40)}
    assert firsts == likeliest  # 40 seeded draws between two words see both


def test_a_low_temperature_is_nearly_greedy():
    net = model().eval()
    greedy = generate_ids(net, VOCAB, [], words=20, top_k=1)
    assert generate_ids(net, VOCAB, [], words=20, temperature=1e-3, seed=3) == greedy


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0.0}, "^temperature 0.0: it must be > 0"),
        ({"temperature": -1.0}, "^temperature -1.0"),
        ({"temperature": 1e-45}, r"^temperature 1e-45: use a finite value >= 0.001"),
        ({"temperature": float("inf")}, "^temperature inf: use a finite value"),
        ({"top_k": -1}, "^top_k -1: it must be >= 0"),
        ({"words": 0}, "^words 0"),
        ({"seed": 2**64}, "^seed 18446744073709551616: use an integer from 0"),
        ({"seed": -1}, "^seed -1"),
    ],
)
def test_bad_sampling_options(options, message):
    with pytest.raises(ConfigError, match=message):
        generate_ids(model(), VOCAB, [], **{"words": 5, **options})


def test_eos_prints_as_a_line_break():
    assert as_text(["the", "cat", "<eos>", "sat", "<eos>"]) == "the cat\nsat\n"
    assert as_text(["<eos>", "the"]) == "\nthe"
    assert as_text([]) == ""


class Spy:
    """Counts the model's forward calls and the window length of each."""

    def __init__(self, net):
        self.lengths, self.forward = [], net.forward
        net.forward = self

    def __call__(self, ids, state):
        self.lengths.append(ids.size(1))
        return self.forward(ids, state)


def test_a_long_prompt_is_read_in_windows_of_its_tokens():
    """A 60k-word prompt was run in one call, keeping (60k x vocab) logits (2.65 GB with PTB's
    vocabulary) for the last position's sake. It is read in windows now, with the same result."""
    net = model().eval()
    prompt = [VOCAB["cat"], VOCAB["sat"], VOCAB["on"]] * 700
    spy = Spy(net)
    sampled = generate_ids(net, VOCAB, prompt, words=8, top_k=1)
    assert max(spy.lengths) == 500 < len(prompt)  # generate.PROMPT_WINDOW
    with torch.no_grad():  # greedy after reading the whole prompt at once
        logits, state = spy.forward(torch.tensor([[VOCAB["<eos>"], *prompt]]), None)
        greedy = []
        for _ in range(8):
            greedy.append(int(logits[0, -1].argmax()))
            logits, state = spy.forward(torch.tensor([[greedy[-1]]]), state)
    assert sampled == greedy


def test_words_come_one_by_one_as_they_are_drawn():
    """The first of a million words is there after one forward pass of the prompt, not after a
    million; and no forward pass is run for the word after the last."""
    from ptblm.generate import sample

    net = model().eval()
    spy = Spy(net)
    words = sample(net, VOCAB, [VOCAB["the"]], words=1_000_000, seed=1)
    first = next(words)
    assert first in VOCAB.values() and spy.lengths == [2]
    assert [first, *(next(words) for _ in range(4))] == generate_ids(
        model(), VOCAB, [VOCAB["the"]], 5, seed=1
    )
    spy.lengths.clear()
    assert len(list(sample(net, VOCAB, [], words=3, seed=1))) == 3 and len(spy.lengths) == 3
    assert torch.is_grad_enabled()  # a suspended generator leaves grad mode as it was


def test_streamed_text_is_as_text():
    from ptblm.generate import stream_text

    rng = random.Random(0)
    for _ in range(200):
        words = [rng.choice(["the", "cat", "<eos>"]) for _ in range(rng.randint(0, 12))]
        pieces = []
        stream_text(words, pieces.append)
        assert "".join(pieces) == as_text(words)


def test_a_diverged_model_is_refused_not_sampled():
    """NaN weights give NaN logits: torch.multinomial failed with a traceback."""
    net = model().eval()
    with torch.no_grad():
        net.decoder.bias.fill_(float("nan"))
    with pytest.raises(CheckpointError, match="not finite numbers"):
        generate_ids(net, VOCAB, [], words=3)
