"""The language model family. The default members are Zaremba et al.'s (docs/reference.md, "Model"):

    ids (batch, steps)
      -> embedding (vocab -> hidden)                          [embedding_dropout: whole words]
      -> dropout
      -> LSTM layer 1 -> dropout -> ... -> LSTM layer L       cells.py: fused or reference
      -> dropout -> linear (hidden -> vocab) = logits         [tie_weights: the embedding matrix]

Dropout (probability 1 - keep_prob) only on the non-recurrent connections: `standard` draws a new
mask for every element (the paper), `variational` one mask per row for the whole window, at every
time step (Gal & Ghahramani 2016). `weight_drop` drops entries of weight_hh, one mask a window
(AWD-LSTM), `recurrent_dropout` masks h between time steps (reference cell only). Every option
defaults to the faithful model, which runs the whole stack as one fused nn.LSTM call; the others
run it layer by layer (the fused cell per layer, or the reference cell).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptblm.cells import (
    LayerwiseLSTM,
    ReferenceLSTM,
    State,
    fused_layer,
    layer_weights,
    one_block,
    stack_layers,
)
from ptblm.config import Config
from ptblm.dropout import SequenceDropout, drop_connect, drop_rows
from ptblm.memory import check_model_fits

__all__ = ["LSTMLanguageModel", "State", "detach_state", "perplexity", "token_nll", "window_loss"]


class LSTMLanguageModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        keep_prob: float,
        init_scale: float,
        cell: str = "fused",
        forget_bias: float = 0.0,
        tie_weights: bool = False,
        dropout_mode: str = "standard",
        embedding_dropout: float = 0.0,
        weight_drop: float = 0.0,
        recurrent_dropout: float = 0.0,
    ):
        super().__init__()
        dropout = 1.0 - keep_prob
        self.hidden_size, self.num_layers, self.cell = hidden_size, num_layers, cell
        self.embedding_dropout, self.weight_drop = embedding_dropout, weight_drop
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.dropout = SequenceDropout(dropout, dropout_mode)
        # One fused call for the whole stack only where nothing happens between the layers or
        # to the weights that nn.LSTM does not do itself.
        self.layer_by_layer = cell != "fused" or dropout_mode != "standard" or weight_drop > 0
        # Layer by layer, `layers` puts the model's own dropout between the layers: the stack's
        # own is unused there (0).
        if cell == "fused":
            between = dropout if num_layers > 1 and not self.layer_by_layer else 0.0
            fused = LayerwiseLSTM if self.layer_by_layer else nn.LSTM
            self.lstm = fused(
                hidden_size, hidden_size, num_layers, batch_first=True, dropout=between
            )
        else:
            self.lstm = ReferenceLSTM(
                hidden_size, hidden_size, num_layers, recurrent_dropout=recurrent_dropout
            )
        self.decoder = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.decoder.weight = self.embedding.weight  # one tensor, initialised once
        self.reset_parameters(init_scale, forget_bias)

    @classmethod
    def from_config(cls, config: Config) -> LSTMLanguageModel:
        """The one constructor training, evaluation and every other command use; ConfigError
        before anything is allocated when the model cannot fit in the host's memory."""
        check_model_fits(config)
        return cls(
            config.vocab_size,
            config.hidden_size,
            config.num_layers,
            config.keep_prob,
            config.init_scale,
            cell=config.cell,
            forget_bias=config.forget_bias,
            tie_weights=config.tie_weights,
            dropout_mode=config.dropout_mode,
            embedding_dropout=config.embedding_dropout,
            weight_drop=config.weight_drop,
            recurrent_dropout=config.recurrent_dropout,
        )

    def reset_parameters(self, init_scale: float, forget_bias: float = 0.0) -> None:
        """Every parameter uniform(-init_scale, init_scale), as the tutorial.

        nn.LSTM keeps two bias vectors per layer (b_ih and b_hh) where the tutorial's cell has
        one. Drawing both would give the sum a triangular distribution twice as wide, and
        training both would move the effective bias twice as fast, so b_hh is frozen and b_ih
        plays the tutorial's single bias. b_hh holds zero, except `forget_bias` in its forget
        gate quarter: TensorFlow's constant added to f, at no cost in the fused cell.
        """
        hidden = self.hidden_size
        for name, parameter in self.named_parameters():  # a tied matrix comes once
            if name.startswith("lstm.bias_hh"):
                with torch.no_grad():
                    parameter.zero_()
                    parameter[hidden : 2 * hidden] = forget_bias
                parameter.requires_grad_(False)
            else:
                nn.init.uniform_(parameter, -init_scale, init_scale)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """Zero (h, c), each (num_layers, batch_size, hidden_size), fp32."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, ids: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """ids (batch, steps) int64, state (h, c) -> logits (batch, steps, vocab), new state."""
        output, state = self.features(ids, state)
        return self.decoder(self.dropout(output)), state

    def features(self, ids: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """The top layer's output h (batch, steps, hidden) before the last dropout and the
        decoder (what the continuous cache keys on), and the new state."""
        if self.training and self.embedding_dropout:
            weight = drop_rows(self.embedding.weight, self.embedding_dropout)
            embedded = nn.functional.embedding(ids, weight)
        else:
            embedded = self.embedding(ids)
        x = self.dropout(embedded)
        if self.layer_by_layer:
            return self.layers(x, state or self.initial_state(ids.size(0), ids.device))
        return self.lstm(x, state)

    def layers(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """The LSTM stack one layer at a time, the model's dropout between layers: x (batch,
        steps, emb), state (h, c) each (layers, batch, H) -> (batch, steps, H), the new state."""

        def layer(k: int, x: torch.Tensor, layer_state: State) -> tuple[torch.Tensor, State]:
            weights = layer_weights(self.lstm, k)
            if self.training and self.weight_drop:
                weights[1] = drop_connect(weights[1], self.weight_drop)
                if self.cell == "fused":
                    weights = one_block(weights)
            if self.cell == "fused":
                return fused_layer(x, layer_state, weights, self.training)
            return self.lstm.layer(x, layer_state, weights)

        return stack_layers(x, state, layer, self.dropout)


def detach_state(state: State) -> State:
    """Cut the graph at the window edge: the values carry over, the gradients stop here.

    (h, c), each (layers, batch, H), cast to fp32 so that it stays fp32 under autocast.
    """
    return tuple(tensor.detach().float() for tensor in state)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of every predicted token, in fp32 whatever the autocast dtype.

    logits (batch, steps, vocab), targets (batch, steps) -> "mean" or "sum" over all tokens (a
    scalar), or "none": each token's, (batch * steps,) in row order.
    """
    return nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), reduction=reduction
    )


def window_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """docs/reference.md's objective of one window: the sum over time steps of the batch-averaged
    cross-entropy, i.e. the mean over all tokens times num_steps (NOT the mean alone: with
    learning rate 1.0 that is num_steps times too weak and does not reproduce the table).

    logits (batch, steps, vocab), targets (batch, steps) -> scalar.
    """
    return token_nll(logits, targets, "mean") * targets.size(1)


def perplexity(nll: float, tokens: int) -> float:
    """exp(mean NLL); inf when that overflows a float (a diverging model), nan for no tokens."""
    if not tokens:
        return math.nan
    try:
        return math.exp(nll / tokens)
    except OverflowError:
        return math.inf


def mean_perplexity(logprobs: torch.Tensor) -> float:
    """logprobs (tokens,): each predicted token's log-probability -> their perplexity."""
    return perplexity(-logprobs.sum().item(), logprobs.numel())
