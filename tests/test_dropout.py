import torch

from ptblm.dropout import SequenceDropout, drop_connect, drop_rows


def test_variational_dropout_uses_one_mask_for_every_time_step():
    torch.manual_seed(0)
    x = torch.ones(4, 7, 10)
    out = SequenceDropout(0.5, "variational").train()(x)
    kept = out != 0
    assert all(torch.equal(kept[:, t], kept[:, 0]) for t in range(7))  # same at every step
    assert not torch.equal(kept[0], kept[1])  # each row its own mask
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept values scaled by 1 / (1 - p)


def test_standard_dropout_draws_a_new_mask_every_time_step():
    torch.manual_seed(0)
    kept = SequenceDropout(0.5, "standard").train()(torch.ones(4, 7, 10)) != 0
    assert not all(torch.equal(kept[:, t], kept[:, 0]) for t in range(7))


def test_no_dropout_in_evaluation():
    x = torch.randn(2, 3, 4)
    for mode in ("standard", "variational"):
        assert torch.equal(SequenceDropout(0.5, mode).eval()(x), x)


def test_embedding_dropout_drops_whole_word_types():
    torch.manual_seed(0)
    weight = torch.randn(50, 6)
    dropped = drop_rows(weight, 0.3)
    zero_rows = (dropped == 0).all(dim=1)
    assert 0 < zero_rows.sum() < 50
    torch.testing.assert_close(dropped[~zero_rows], weight[~zero_rows] / 0.7)


def test_drop_connect_drops_entries_and_keeps_the_gradient_path():
    torch.manual_seed(0)
    weight = torch.randn(8, 8, requires_grad=True)
    dropped = drop_connect(weight, 0.5)
    dropped.sum().backward()
    zeros = dropped == 0
    assert 0 < zeros.sum() < 64
    assert torch.equal(weight.grad == 0, zeros)  # dropped entries get no gradient this window
