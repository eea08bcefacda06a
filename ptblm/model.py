"""The Zaremba et al. LSTM language model (REFERENCE.md, "Model").

    ids (batch, steps)
      -> embedding (vocab -> hidden) -> dropout
      -> LSTM layer 1 -> dropout -> ... -> LSTM layer num_layers      (nn.LSTM: fused, cuDNN on GPU)
      -> dropout -> linear (hidden -> vocab) = logits (batch, steps, vocab)

Dropout (probability 1 - keep_prob) only on non-recurrent connections; the recurrent ones get
none, which is what nn.LSTM's `dropout` argument does between layers.
"""

from __future__ import annotations

import torch
from torch import nn

from ptblm.config import Config

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, batch, hidden)


class LSTMLanguageModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int,
        num_layers: int,
        keep_prob: float,
        init_scale: float,
    ):
        super().__init__()
        dropout = 1.0 - keep_prob
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            hidden_size,
            hidden_size,
            num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.decoder = nn.Linear(hidden_size, vocab_size)
        self.reset_parameters(init_scale)

    @classmethod
    def from_config(cls, config: Config) -> LSTMLanguageModel:
        return cls(
            config.vocab_size,
            config.hidden_size,
            config.num_layers,
            config.keep_prob,
            config.init_scale,
        )

    def reset_parameters(self, init_scale: float) -> None:
        """Every parameter uniform(-init_scale, init_scale), as the tutorial.

        nn.LSTM keeps two bias vectors per layer (b_ih and b_hh) where the tutorial's cell has
        one. Drawing both would give the sum a triangular distribution twice as wide, and
        training both would move the effective bias twice as fast, so b_hh is held at zero
        and b_ih plays the tutorial's single bias.
        """
        for name, parameter in self.named_parameters():
            if name.startswith("lstm.bias_hh"):
                nn.init.zeros_(parameter)
                parameter.requires_grad_(False)
            else:
                nn.init.uniform_(parameter, -init_scale, init_scale)

    def initial_state(self, batch_size: int, device: torch.device | str = "cpu") -> State:
        """Zero (h, c), each (num_layers, batch_size, hidden_size), fp32."""
        zeros = torch.zeros(self.num_layers, batch_size, self.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (batch, steps) int64, state (h, c) -> logits (batch, steps, vocab), new state."""
        embedded = self.dropout(self.embedding(ids))
        output, state = self.lstm(embedded, state)
        return self.decoder(self.dropout(output)), state


def detach_state(state: State) -> State:
    """Cut the graph at the window edge: the values carry over, the gradients stop here.

    Cast to fp32 so that the carried state stays fp32 under autocast.
    """
    return tuple(tensor.detach().float() for tensor in state)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    """Cross-entropy of every predicted token, in fp32 whatever the autocast dtype.

    logits (batch, steps, vocab), targets (batch, steps) -> "mean" or "sum" over all tokens.
    """
    return nn.functional.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), reduction=reduction
    )


def window_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """REFERENCE.md's objective of one window: the sum over time steps of the batch-averaged
    cross-entropy, i.e. the mean over all tokens times num_steps (NOT the mean alone: with
    learning rate 1.0 that is num_steps times too weak and does not reproduce the table).

    logits (batch, steps, vocab), targets (batch, steps) -> scalar.
    """
    return token_nll(logits, targets, "mean") * targets.size(1)
