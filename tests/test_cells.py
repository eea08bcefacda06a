"""The reference LSTM against the fused one, and against the TensorFlow and numpy formulations
rebuilt here from their equations."""

import numpy as np
import pytest
import torch
from torch import nn

from ptblm.cells import ReferenceLSTM, layer_weights, one_block


def twin_stacks(input_size, hidden_size, num_layers, seed=0):
    """A fused nn.LSTM and a ReferenceLSTM holding the same random weights."""
    torch.manual_seed(seed)
    fused = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
    for parameter in fused.parameters():
        nn.init.uniform_(parameter, -0.3, 0.3)
    reference = ReferenceLSTM(input_size, hidden_size, num_layers)
    assert [name for name, _ in reference.named_parameters()] == [
        name for name, _ in fused.named_parameters()
    ]
    reference.load_state_dict(fused.state_dict())  # same names and shapes
    return fused, reference


def relative_error(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("input_size, hidden_size, batch, steps", [(5, 7, 3, 4), (16, 16, 2, 9)])
def test_reference_equals_fused_outputs_state_and_every_gradient(
    input_size, hidden_size, batch, steps
):
    fused, reference = twin_stacks(input_size, hidden_size, num_layers=2)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, steps, input_size, generator=generator)
    state = tuple(torch.randn(2, batch, hidden_size, generator=generator) for _ in range(2))
    results = []
    for stack in (fused, reference):
        x_in = x.clone().requires_grad_()
        state_in = tuple(t.clone().requires_grad_() for t in state)
        output, (h, c) = stack(x_in, state_in)
        # A loss that touches the output and both final states.
        (output.sin().sum() + h.cos().sum() + (c * c).sum()).backward()
        grads = {name: p.grad for name, p in stack.named_parameters()}
        results.append((output, h, c, x_in.grad, state_in[0].grad, state_in[1].grad, grads))
    for ours, theirs in zip(results[1][:6], results[0][:6]):
        assert relative_error(ours.detach(), theirs.detach()) < 1e-5
    for name, grad in results[0][6].items():
        assert relative_error(results[1][6][name], grad) < 1e-5, name


def test_one_step_equals_tensorflow_and_numpy_formulations():
    """TensorFlow's BasicLSTMCell (one matrix on concat([x, h]), gates i, j, f, o, forget_bias on
    f) and a numpy LSTM (one matrix per gate on concat(x, h)), on re-arranged weights."""
    hidden, inputs, batch, forget_bias = 4, 3, 2, 1.0
    torch.manual_seed(2)
    reference = ReferenceLSTM(inputs, hidden, 1)
    for parameter in reference.parameters():
        nn.init.uniform_(parameter, -0.5, 0.5)
    with torch.no_grad():  # ptblm's forget_bias: the f quarter of the frozen b_hh
        reference.bias_hh_l0.zero_()
        reference.bias_hh_l0[hidden : 2 * hidden] = forget_bias
    x = torch.randn(batch, 1, inputs)
    h0, c0 = torch.randn(1, batch, hidden), torch.randn(1, batch, hidden)
    with torch.no_grad():
        _, (h1, c1) = reference(x, (h0, c0))

    w_ih = reference.weight_ih_l0.detach().numpy()
    w_hh = reference.weight_hh_l0.detach().numpy()
    b = reference.bias_ih_l0.detach().numpy()
    xs, hs, cs = x[:, 0].numpy(), h0[0].numpy(), c0[0].numpy()

    def sigmoid(z):
        return 1 / (1 + np.exp(-z))

    # TensorFlow: kernel (in + H, 4H) with columns in TF's gate order i, j, f, o.
    i, f, g, o = (slice(k * hidden, (k + 1) * hidden) for k in range(4))
    kernel = np.concatenate([w_ih, w_hh], axis=1).T  # (in + H, 4H), ours i, f, g, o
    tf_kernel = np.concatenate([kernel[:, i], kernel[:, g], kernel[:, f], kernel[:, o]], axis=1)
    tf_bias = np.concatenate([b[i], b[g], b[f], b[o]])
    gates = np.concatenate([xs, hs], axis=1) @ tf_kernel + tf_bias
    ti, tj, tf, to = np.split(gates, 4, axis=1)
    tf_c = sigmoid(tf + forget_bias) * cs + sigmoid(ti) * np.tanh(tj)
    tf_h = sigmoid(to) * np.tanh(tf_c)
    np.testing.assert_allclose(c1[0].numpy(), tf_c, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h1[0].numpy(), tf_h, rtol=1e-5, atol=1e-6)

    # numpy: one (in + H, H) matrix and one bias per gate.
    per_gate = {name: (kernel[:, s], b[s]) for name, s in zip("ifgo", (i, f, g, o))}
    xh = np.concatenate([xs, hs], axis=1)
    pre = {name: xh @ w + bias for name, (w, bias) in per_gate.items()}
    np_c = sigmoid(pre["f"] + forget_bias) * cs + sigmoid(pre["i"]) * np.tanh(pre["g"])
    np_h = sigmoid(pre["o"]) * np.tanh(np_c)
    np.testing.assert_allclose(h1[0].numpy(), np_h, rtol=1e-5, atol=1e-6)


def test_recurrent_dropout_masks_h_with_one_mask_for_the_window():
    torch.manual_seed(3)
    stack = ReferenceLSTM(3, 5, 1, recurrent_dropout=0.5)
    for parameter in stack.parameters():
        nn.init.uniform_(parameter, -0.5, 0.5)
    x, state = torch.randn(2, 6, 3), (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5))
    stack.eval()
    with torch.no_grad():
        plain, _ = stack(x, state)
    stack.train()
    seen = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        if b.shape == (5, 20):  # h @ weight_hh^T: record which entries of h were kept
            seen.append((a != 0).clone())
        return original(a, b)

    torch.manual_seed(4)
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.Tensor, "__matmul__", spy)
        dropped, _ = stack(x, state)
    assert not torch.allclose(dropped, plain)
    # From step 2 on (h is no longer zero) the same entries are dropped at every step.
    assert all(torch.equal(mask, seen[1]) for mask in seen[1:]) and not seen[1].all()


def test_a_layer_by_layer_fused_stack_keeps_each_layers_weights_in_one_block_of_its_own():
    """cuDNN takes a layer's weights as they are only if they start a block laid out as w_ih,
    w_hh, b_ih, b_hh; else it copies them on every call (with a warning). Also after .to()."""
    from ptblm.model import LSTMLanguageModel

    model = LSTMLanguageModel(50, 8, 3, 0.5, 0.1, dropout_mode="variational")
    for moved in (model, model.to(torch.float64)):
        for k in range(3):
            weights = layer_weights(moved.lstm, k)
            base = weights[0].untyped_storage()
            assert base.nbytes() == sum(w.numel() for w in weights) * weights[0].element_size()
            offset = 0
            for w in weights:
                assert w.untyped_storage().data_ptr() == base.data_ptr()
                assert w.storage_offset() == offset and w.is_contiguous()
                offset += w.numel()
    # The same parameters as nn.LSTM, so checkpoints move between the two.
    plain = LSTMLanguageModel(50, 8, 3, 0.5, 0.1)
    assert list(plain.state_dict()) == list(model.state_dict())


def test_one_block_holds_the_weights_and_passes_their_gradients_back():
    weights = [torch.randn(8, 4, requires_grad=True), torch.randn(8, 2, requires_grad=True)]
    block = one_block(weights)
    assert block[0].untyped_storage().data_ptr() == block[1].untyped_storage().data_ptr()
    assert all(torch.equal(a, b) for a, b in zip(block, weights))
    (block[0].sum() + 2 * block[1].sum()).backward()
    assert torch.equal(weights[0].grad, torch.ones(8, 4))
    assert torch.equal(weights[1].grad, torch.full((8, 2), 2.0))
