import pytest
import torch

from ptblm.data import load_corpus
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel, perplexity


@pytest.fixture(scope="module")
def ptb_test_ids(ptb_dir):
    return load_corpus(corpus_dir=ptb_dir).test


def small_model(vocab_size=10000, hidden_size=16):
    torch.manual_seed(0)
    return LSTMLanguageModel(vocab_size, hidden_size, num_layers=2, keep_prob=0.5, init_scale=0.1)


def test_long_windows_give_the_num_steps_1_protocol(ptb_test_ids):
    """The table's protocol (batch 1, num_steps 1) equals the fast long-window evaluation."""
    model = small_model()
    ids = ptb_test_ids[:3001]
    nll_1, tokens_1 = evaluate(model, ids, batch_size=1, num_steps=1)
    for num_steps in (7, 500, 5000):
        nll, tokens = evaluate(model, ids, batch_size=1, num_steps=num_steps)
        assert tokens == tokens_1 == 3000  # every token after the first, once
        assert perplexity(nll, tokens) == pytest.approx(perplexity(nll_1, tokens_1), rel=1e-6)
    assert model.training  # evaluate restores the mode it found


def test_the_whole_test_stream_is_predicted_once(ptb_test_ids):
    _, tokens = evaluate(small_model(hidden_size=4), ptb_test_ids, batch_size=1, num_steps=500)
    assert tokens == 82_429


def test_evaluation_carries_state_across_windows():
    """Against an independent one-pass computation: one window as long as the stream."""
    model = small_model(vocab_size=50).eval()
    ids = torch.randint(50, (401,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, _ = model(ids[:-1].view(1, -1), model.initial_state(1))
        expected = torch.nn.functional.cross_entropy(logits[0], ids[1:], reduction="sum").item()
    nll, tokens = evaluate(model, ids, batch_size=1, num_steps=13)
    assert tokens == 400
    assert nll == pytest.approx(expected, rel=1e-5)


def test_validation_protocol_uses_full_windows_only():
    model = small_model(vocab_size=50)
    ids = torch.arange(203) % 50  # batch 4: rows of 50, (50 - 1) // 5 = 9 windows of 4 x 5
    _, tokens = evaluate(model, ids, batch_size=4, num_steps=5)
    assert tokens == 9 * 4 * 5


def test_a_stop_raised_inside_evaluation_leaves_the_model_in_the_mode_it_was_in():
    """Validation runs inside training: an exception from it (a signal's, a device's) must not
    leave dropout off for the epochs a caller may still train."""
    model = small_model(vocab_size=50).train()

    def fail():
        raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        evaluate(model, torch.arange(203) % 50, batch_size=4, num_steps=5, should_stop=fail)
    assert model.training
