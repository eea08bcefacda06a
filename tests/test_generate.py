import pytest
import torch

from ptblm.errors import ConfigError
from ptblm.generate import as_text, generate
from ptblm.model import LSTMLanguageModel

VOCAB = {word: i for i, word in enumerate(["the", "<unk>", "<eos>", "cat", "sat", "mat", "on"])}


def model():
    torch.manual_seed(0)
    return LSTMLanguageModel(len(VOCAB), 8, num_layers=2, keep_prob=0.5, init_scale=1.0)


def test_the_same_seed_gives_the_same_words():
    one = generate(model(), VOCAB, [VOCAB["the"]], words=50, seed=7)
    assert one == generate(model(), VOCAB, [VOCAB["the"]], words=50, seed=7)
    assert one != generate(model(), VOCAB, [VOCAB["the"]], words=50, seed=8)
    assert len(one) == 50 and set(one) <= set(VOCAB.values())


def test_top_k_1_is_greedy_decoding():
    """Against a greedy loop written here: feed <eos> and the prompt, then the argmax."""
    net = model().eval()
    sampled = generate(net, VOCAB, [VOCAB["cat"]], words=10, top_k=1, seed=1)
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
    firsts = {generate(net, VOCAB, [], words=1, top_k=2, seed=seed)[0] for seed in range(40)}
    assert firsts == likeliest  # 40 seeded draws between two words see both


def test_a_low_temperature_is_nearly_greedy():
    net = model().eval()
    greedy = generate(net, VOCAB, [], words=20, top_k=1)
    assert generate(net, VOCAB, [], words=20, temperature=1e-4, seed=3) == greedy


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temperature": 0.0}, "--temperature 0.0: it must be > 0"),
        ({"temperature": -1.0}, "--temperature -1.0"),
        ({"top_k": -1}, "--top-k -1: it must be >= 0"),
        ({"words": 0}, "--words 0"),
        ({"seed": 2**64}, "--seed 18446744073709551616: use an integer from 0"),
        ({"seed": -1}, "--seed -1"),
    ],
)
def test_bad_sampling_options(options, message):
    with pytest.raises(ConfigError, match=message):
        generate(model(), VOCAB, [], **{"words": 5, **options})


def test_eos_prints_as_a_line_break():
    assert as_text(["the", "cat", "<eos>", "sat", "<eos>"]) == "the cat\nsat\n"
    assert as_text(["<eos>", "the"]) == "\nthe"
    assert as_text([]) == ""
