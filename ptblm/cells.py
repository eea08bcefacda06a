"""The LSTM stacks: the fused one (nn.LSTM: cuDNN on a GPU, oneDNN on a CPU) and a reference one
written from the gate equations, one time step at a time, that a reader can follow and change.

Both own the same parameters, with nn.LSTM's names and shapes, so a checkpoint trained with one
evaluates and resumes with the other:

    weight_ih_l{k}  (4H, in)    weight_hh_l{k}  (4H, H)    bias_ih_l{k}  (4H)    bias_hh_l{k}  (4H)

rows in gate order i, f, g, o. ptblm keeps bias_hh frozen (zero, except for `forget_bias` in its
f quarter, see model.py), so bias_ih is the tutorial's one bias per gate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ptblm.dropout import bernoulli_mask

State = tuple[torch.Tensor, torch.Tensor]  # (h, c): each (num_layers, batch, hidden) for a
# stack, (batch, hidden) for one layer


def layer_weights(lstm: nn.Module, layer: int) -> list[torch.Tensor]:
    """[weight_ih, weight_hh, bias_ih, bias_hh] of one layer."""
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    return [getattr(lstm, f"{name}_l{layer}") for name in names]


class LayerwiseLSTM(nn.LSTM):
    """nn.LSTM whose layers each own one contiguous block of memory, for stacks run one layer at
    a time (variational dropout, weight drop).

    nn.LSTM keeps all layers in one block. cuDNN takes a layer's weights as they are only when
    they start a block laid out as w_ih, w_hh, b_ih, b_hh; layer 1 of one shared block does not,
    so cuDNN would copy it on every call and warn "RNN module weights are not part of single
    contiguous chunk of memory". Same parameters, names and shapes as nn.LSTM.
    """

    def flatten_parameters(self) -> None:  # nn.LSTM calls it after every .to() / .cuda()
        for k in range(self.num_layers):
            weights = layer_weights(self, k)
            block = torch.cat([w.detach().reshape(-1) for w in weights])
            offset = 0
            for w in weights:
                w.data = block[offset : offset + w.numel()].view_as(w)
                offset += w.numel()


def one_block(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """A layer's weights copied into one block in cuDNN's order (differentiably), for weights made
    anew each window (a weight-dropped weight_hh): one copy instead of cuDNN's own, no warning."""
    block = torch.cat([w.reshape(-1) for w in weights])
    views, offset = [], 0
    for w in weights:
        views.append(block[offset : offset + w.numel()].view_as(w))
        offset += w.numel()
    return views


def fused_layer(
    x: torch.Tensor, state: State, weights: list[torch.Tensor], training: bool
) -> tuple[torch.Tensor, State]:
    """One layer of the fused LSTM on the given weights (e.g. with a weight-dropped weight_hh),
    without re-registering parameters. x (batch, steps, in), state (h, c) each (batch, H)."""
    hidden = (state[0][None], state[1][None])  # nn.LSTM's (layers, batch, H)
    output, h, c = torch._VF.lstm(x, hidden, weights, True, 1, 0.0, training, False, True)
    return output, (h[0], c[0])


def stack_layers(
    x: torch.Tensor,
    state: State,
    layer: Callable[[int, torch.Tensor, State], tuple[torch.Tensor, State]],
    between: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, State]:
    """Run an LSTM stack one layer at a time: layer(k, x, (h_k, c_k)) for each layer k, with
    between(x) (the dropout between layers) before every layer but the first.

    x (batch, steps, in), state (h, c) each (num_layers, batch, H) -> output of the last layer
    (batch, steps, H), final (h, c) each (num_layers, batch, H).
    """
    final_h, final_c = [], []
    for k in range(state[0].size(0)):
        if k > 0:
            x = between(x)
        x, (h, c) = layer(k, x, (state[0][k], state[1][k]))
        final_h.append(h)
        final_c.append(c)
    return x, (torch.stack(final_h), torch.stack(final_c))


class ReferenceLSTM(nn.Module):
    """The LSTM of nn.LSTM, from its equations, one layer and one time step at a time:

        gates = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh      split in four: i, f, g, o
        c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
        h_t = sigmoid(o) * tanh(c_t)

    The cells users know, line by line:
    - PyTorch `_VF.lstm` / nn.LSTM: exactly this, gates i, f, g, o.
    - TensorFlow `BasicLSTMCell`: one matrix W (in + H, 4H) on concat([x, h]) and one bias, gates
      i, j, f, o; c = sigmoid(f + forget_bias) * c + sigmoid(i) * tanh(j). So W_ih^T and W_hh^T
      are W's top and bottom rows, j is g, TF's gate order i, j, f, o is ours i, g, f, o, and
      `forget_bias` is a constant added to f (here: the frozen f quarter of b_hh).
    - MXNet `LSTMCell`: i2h (W_ih, b_ih) and h2h (W_hh, b_hh), gates in, forget, transform, out
      (= i, f, g, o); `forget_bias` 1.0 by default, added to the forget gate's bias.
    - A plain numpy LSTM with one matrix per gate on concat(x, h): W_i, W_f, W_g, W_o, each
      (in + H, H), are the four row blocks of [W_ih | W_hh]^T.

    `recurrent_dropout` (Gal & Ghahramani 2016) multiplies h_{t-1} by one mask per row per call
    (window) before W_hh, at every time step: what the fused cell cannot do. `dropout` between
    layers is standard (a fresh mask per element), as nn.LSTM's, when the stack runs as one
    (`forward`, a drop-in nn.LSTM); the model runs it layer by layer (`layer`), with its own
    dropout between.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        for k in range(num_layers):
            fan_in = input_size if k == 0 else hidden_size
            for name, shape in (
                ("weight_ih", (4 * hidden_size, fan_in)),
                ("weight_hh", (4 * hidden_size, hidden_size)),
                ("bias_ih", (4 * hidden_size,)),
                ("bias_hh", (4 * hidden_size,)),
            ):
                self.register_parameter(f"{name}_l{k}", nn.Parameter(torch.empty(shape)))
        # nn.LSTM's own initialisation, draw for draw, so that one seed gives both cells the
        # same weights once the model re-initialises them (model.py).
        bound = 1.0 / math.sqrt(hidden_size)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -bound, bound)

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x (batch, steps, in), state (h, c) each (num_layers, batch, H) -> output (batch, steps,
        H) of the last layer, final (h, c)."""
        return stack_layers(
            x,
            state,
            lambda k, x, layer_state: self.layer(x, layer_state, layer_weights(self, k)),
            lambda x: nn.functional.dropout(x, self.dropout, self.training),
        )

    def layer(
        self, x: torch.Tensor, state: State, weights: list[torch.Tensor]
    ) -> tuple[torch.Tensor, State]:
        """One layer over all time steps; state (h, c) each (batch, H)."""
        weight_ih, weight_hh, bias_ih, bias_hh = weights
        h, c = state
        keep_h = None
        if self.training and self.recurrent_dropout:
            keep_h = bernoulli_mask(h.shape, self.recurrent_dropout, h)
        input_part = x @ weight_ih.T + bias_ih  # all time steps at once: (batch, steps, 4H)
        outputs = []
        for t in range(x.size(1)):
            recurrent = h if keep_h is None else h * keep_h
            gates = input_part[:, t] + recurrent @ weight_hh.T + bias_hh
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs, dim=1), (h, c)
