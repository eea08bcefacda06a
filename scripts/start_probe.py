"""How a config's first training windows go, one line a window (docs/results.md, "large"):

    python scripts/start_probe.py --config large --seed 3 --windows 160

Each line: the window's perplexity, its gradient norm before clipping (max_grad_norm clips
it), the three parameters with the largest share of that norm, the largest decoder weight and
bias, and the top layer's two figures that ptblm/stall.py watches: the largest |c| of its
carried state and the share of its units whose h is about 0 (|h| < 0.01; about half of them in a
large run that trains well); then the validation perplexity (training batch size and num_steps,
dropout off).

The model, the seed, the order of random draws and the update are `ptblm train`'s (fp32, the
eager step), so on the CPU the windows are that run's: seed 3's first 160 windows gave its
training perplexity to the last digit shown. Needs PTB under --data-dir (or --corpus).
"""

from __future__ import annotations

import argparse
import contextlib
import math

import torch

from ptblm.config import load_config
from ptblm.data import batchify, load_corpus, windows
from ptblm.divergence import Diverged
from ptblm.errors import PtblmError
from ptblm.evaluate import evaluate
from ptblm.model import LSTMLanguageModel, perplexity
from ptblm.runtime import configure_tf32, seed_everything
from ptblm.stall import top_layer_figures
from ptblm.step import EagerStep


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="large")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--windows", type=int, default=160)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--corpus", help="a corpus of your own instead of PTB")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = load_config(args.config, [f"seed={args.seed}", *args.set])
    if config.precision != "fp32":
        parser.error("fp32 only (the step here has no autocast or GradScaler)")
    corpus = load_corpus(args.data_dir, args.corpus)
    device = torch.device(args.device)
    if device.type == "cuda":
        configure_tf32(config.allow_tf32)
    seed_everything(config.seed)  # then the model: the order `ptblm train` draws in
    model = LSTMLanguageModel.from_config(config).to(device)
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
    )
    step = EagerStep(model, optimizer, config, contextlib.nullcontext())
    data = batchify(corpus.train, config.batch_size).to(device)
    step.state = model.initial_state(config.batch_size, device)
    model.train()
    trained = 0
    for x, y in windows(data, config.num_steps, 0, args.windows):
        try:
            step(x, y)
        except Diverged as diverged:
            message = f"window {trained + 1} diverged: loss per token {diverged.mean_nll:g}"
            raise SystemExit(message) from None
        trained += 1
        [(nll, norm)] = step.drain()
        clipped = min(1.0, config.max_grad_norm / norm) if norm > 0 else 1.0
        shares = sorted(
            ((p.grad.norm().item() / clipped, name) for name, p in zip(names, step.parameters)),
            reverse=True,
        )[:3]
        silent, max_cell = top_layer_figures(step.state)
        print(
            f"{trained:5d} ppl {math.exp(min(nll, 700)):11.1f} grad {norm:7.1f} ("
            + ", ".join(f"{name} {value:.1f}" for value, name in shares)
            + f") max|decoder.weight| {model.decoder.weight.abs().max():.2f}"
            f" max|decoder.bias| {model.decoder.bias.abs().max():.2f}"
            f" max|c| {max_cell:.1f} h~0 {silent:.3f}",
            flush=True,
        )
    nll, tokens = evaluate(model, corpus.valid, config.batch_size, config.num_steps)
    print(f"valid perplexity after {trained} windows: {perplexity(nll, tokens):.2f}")


if __name__ == "__main__":
    try:
        main()
    except PtblmError as error:  # a bad config, no corpus: said in one line, as ptblm says it
        raise SystemExit(f"start_probe.py: {error}") from None
