"""Training throughput of ptblm against a bare PyTorch loop of the same shapes, in one process.

    python scripts/bench.py                 # small and medium, fp32 and bf16
    python scripts/bench.py --configs small --precisions fp32 --windows 200

For each config and precision it times ptblm's real training step (Trainer.train_epoch: data
views, loss, clipping, divergence guard, logging) and a bare loop written here with nothing but
nn.Embedding, nn.LSTM, nn.Linear, cross-entropy, clip_grad_norm_ and SGD. The two alternate in
rounds so that both see the same machine state; the best round of each is kept. Reports
words/s and the ratio ptblm / bare (target >= 0.95), and bf16 / fp32 for each.

Uses synthetic ids (the speed does not depend on which words they are), so it needs no data.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from ptblm.config import load_config
from ptblm.data import Corpus
from ptblm.train import StopOnSignal, Trainer


class BareModel(nn.Module):
    def __init__(self, vocab_size, hidden_size, num_layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)

    def forward(self, x, state):
        output, state = self.lstm(self.dropout(self.embedding(x)), state)
        return self.decoder(self.dropout(output)), state


def bare_words_per_second(config, data: torch.Tensor, windows: int) -> float:
    """The textbook loop, nothing else."""
    torch.manual_seed(0)
    model = BareModel(
        config.vocab_size, config.hidden_size, config.num_layers, 1 - config.keep_prob
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if config.precision == "bf16"
        else contextlib.nullcontext()
    )
    zeros = torch.zeros(config.num_layers, config.batch_size, config.hidden_size)
    state = (zeros, zeros.clone())
    steps = config.num_steps
    started = time.perf_counter()
    for i in range(windows):
        x = data[:, i * steps : (i + 1) * steps]
        y = data[:, i * steps + 1 : (i + 1) * steps + 1]
        with autocast:
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()) * steps
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        state = tuple(s.detach().float() for s in state)
    loss.item()
    return windows * config.batch_size * steps / (time.perf_counter() - started)


class NullWriter:
    def add_scalar(self, *args, **kwargs):
        pass


def ptblm_words_per_second(config, ids: torch.Tensor, windows: int) -> float:
    """ptblm's own epoch loop (Trainer.train_epoch), stopped after `windows` windows."""
    vocab = {str(i): i for i in range(config.vocab_size)}
    corpus = Corpus(vocab=vocab, train=ids, valid=ids[:1000], test=ids[:1000], folder=Path("."))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            config,
            corpus,
            Path(folder) / "run",
            torch.device("cpu"),
            max_steps=windows,
            progress=False,
        )
        started = time.perf_counter()
        trainer.train_epoch(NullWriter(), StopOnSignal())
        return windows * config.batch_size * config.num_steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["small", "medium"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--windows", type=int, default=100, help="training windows per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.windows} windows x {args.rounds} rounds"
    )
    print(f"{'config':8} {'precision':9} {'bare w/s':>9} {'ptblm w/s':>10} {'ptblm/bare':>10}")
    results = {}
    for name in args.configs:
        for precision in args.precisions:
            config = load_config(name, [f"precision={precision}"])
            generator = torch.Generator().manual_seed(0)
            length = config.batch_size * ((args.windows + 1) * config.num_steps + 1)
            ids = torch.randint(config.vocab_size, (length,), generator=generator)
            data = ids.view(config.batch_size, -1)
            bare, ours = 0.0, 0.0
            for _ in range(args.rounds):
                bare = max(bare, bare_words_per_second(config, data, args.windows))
                ours = max(ours, ptblm_words_per_second(config, ids, args.windows))
            results[name, precision] = ours
            print(
                f"{name:8} {precision:9} {bare:9.0f} {ours:10.0f} {ours / bare:10.3f}", flush=True
            )
    for name in args.configs:
        if (name, "fp32") in results and (name, "bf16") in results:
            print(
                f"{name}: ptblm bf16 / fp32 = {results[name, 'bf16'] / results[name, 'fp32']:.2f}x"
            )


if __name__ == "__main__":
    main()
