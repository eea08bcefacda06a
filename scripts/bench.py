"""Training throughput of ptblm against a bare PyTorch loop of the same shapes, in one process.

    python scripts/bench.py                 # small and medium, fp32 and bf16
    python scripts/bench.py --configs small medium large --precisions fp32 --device cuda
    python scripts/bench.py --ptb ../shared/ptb --configs small --precisions fp32
    python scripts/bench.py --configs small --precisions fp32 --set cell=reference  # a variant
    python scripts/bench.py --contention ../shared/ptb   # runs side by side, thread defaults

For each config and precision it times ptblm's real training step (Trainer.train_epoch: data
views, loss, clipping, divergence guard, logging) and a bare loop written here with nothing but
nn.Embedding, nn.LSTM, nn.Linear, cross-entropy, clip_grad_norm_ and SGD (bias_hh frozen, as in
ptblm's model, so both train the same parameters). The two alternate in rounds so that both
see the same machine state; the best round of each is kept. Reports words/s, the ratio
ptblm / bare (target >= 0.95), and bf16 / fp32 for each config.

--contention DIR times whole `ptblm train --config small` runs (DIR: the PTB files) instead:
one alone with the default threads (adapted to the load) and with every core (--threads N, torch's
own default), then two started together, each way; it reports each run's training words/s and
the ratios to the solo run. Run it on an otherwise idle machine.

The ids are synthetic, drawn with PTB-like word frequencies (a Zipf law over the vocabulary:
the embedding's backward pass costs more when rows repeat), so no data is needed. With
--ptb DIR it also reports how long loading the real corpus (read, tokenize, number) takes.
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
from ptblm.data import Corpus, load_corpus
from ptblm.runtime import cpu_has_native_bf16, keep_freed_memory, resolve_device
from ptblm.signals import StopOnSignal
from ptblm.train import Trainer


class BareModel(nn.Module):
    def __init__(self, vocab_size, hidden_size, num_layers, dropout):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden_size, vocab_size)
        for name, parameter in self.lstm.named_parameters():
            if name.startswith("bias_hh"):
                parameter.requires_grad_(False)

    def forward(self, x, state):
        output, state = self.lstm(self.dropout(self.embedding(x)), state)
        return self.decoder(self.dropout(output)), state


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_words_per_second(config, data: torch.Tensor, windows: int, device: torch.device) -> float:
    """The textbook loop, nothing else."""
    torch.manual_seed(0)
    model = BareModel(
        config.vocab_size, config.hidden_size, config.num_layers, 1 - config.keep_prob
    )
    model.to(device)
    data = data.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.learning_rate)
    autocast = contextlib.nullcontext()
    if config.precision != "fp32":
        dtype = torch.bfloat16 if config.precision == "bf16" else torch.float16
        autocast = torch.autocast(device.type, dtype=dtype)
    zeros = torch.zeros(config.num_layers, config.batch_size, config.hidden_size, device=device)
    state = (zeros, zeros.clone())
    steps = config.num_steps
    synchronize(device)
    started = time.perf_counter()
    for i in range(windows):
        x = data[:, i * steps : (i + 1) * steps]
        y = data[:, i * steps + 1 : (i + 1) * steps + 1]
        with autocast:
            logits, state = model(x, state)
            loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten()) * steps
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        state = tuple(s.detach().float() for s in state)
    loss.item()
    synchronize(device)
    return windows * config.batch_size * steps / (time.perf_counter() - started)


def ptblm_words_per_second(config, ids: torch.Tensor, windows: int, device: torch.device) -> float:
    """ptblm's own epoch loop (Trainer.train_epoch), stopped after `windows` windows."""
    vocab = {str(i): i for i in range(config.vocab_size)}
    corpus = Corpus(vocab=vocab, train=ids, valid=ids[:2000], test=ids[:2000], folder=Path("."))
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(
            config, corpus, Path(folder) / "run", device, max_steps=windows, verbose=False
        )
        synchronize(device)
        started = time.perf_counter()
        trainer.train_epoch(StopOnSignal())
        synchronize(device)
        return windows * config.batch_size * config.num_steps / (time.perf_counter() - started)


def zipf_ids(vocab_size: int, length: int) -> torch.Tensor:
    """Ids with PTB-like frequencies: P(id = k) proportional to 1 / (k + 1)."""
    weights = 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    return torch.multinomial(weights, length, replacement=True, generator=generator)


def train_runs(ptb: Path, threads: int | None, together: int, windows: int) -> list[float]:
    """Training words/s of `together` small runs started at once (metrics.json's train_wps)."""
    import json
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    with tempfile.TemporaryDirectory() as runs:
        processes = []
        for k in range(together):
            command = [sys.executable, "-m", "ptblm", "train", "-c", "small", "--corpus", str(ptb),
                       "--max-steps", str(windows), "--eval-tokens", "2000", "--runs-dir", runs,
                       "--name", f"run{k}", "--quiet"]  # fmt: skip
            if threads:
                command += ["--threads", str(threads)]
            processes.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        for process in processes:
            assert process.wait() == 0, "a benchmark run failed"
        return [
            json.loads((Path(runs) / f"run{k}" / "metrics.json").read_text())["train_wps"]
            for k in range(together)
        ]


def contention(ptb: Path, windows: int, rounds: int) -> None:
    from ptblm.runtime import cpu_count

    cores = cpu_count()
    print(f"ptblm train --config small --max-steps {windows}, {cores} cores, best of {rounds}")
    solo: dict[str, float] = {}
    for label, threads in (("adaptive (default)", None), (f"--threads {cores}", cores)):
        solo[label] = max(train_runs(ptb, threads, 1, windows)[0] for _ in range(rounds))
        print(f"  alone, {label:20} {solo[label]:8.0f} words/s", flush=True)
    ratio = solo["adaptive (default)"] / solo[f"--threads {cores}"]
    print(f"  alone: adaptive / every core = {ratio:.3f}")
    for label, threads in (("adaptive (default)", None), (f"--threads {cores}", cores)):
        pair = max((train_runs(ptb, threads, 2, windows) for _ in range(rounds)), key=min)
        shares = ", ".join(f"{wps:.0f} ({wps / solo[label]:.2f} of alone)" for wps in pair)
        print(f"  two together, {label:20} {shares}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="+", default=["small", "medium"])
    parser.add_argument(
        "--precisions", nargs="+", help="default: fp32, and bf16 where the device computes it"
    )
    parser.add_argument("--windows", type=int, default=100, help="training windows per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field for ptblm's loop (e.g. cell=reference); the bare loop stays "
        "the plain fused model, so the ratio is the variant's cost",
    )
    parser.add_argument(
        "--ptb", type=Path, help="a folder with the PTB files: also time loading it"
    )
    parser.add_argument(
        "--contention", type=Path, metavar="PTB_DIR", help="time whole runs side by side instead"
    )
    args = parser.parse_args()
    if args.contention:
        contention(args.contention, max(args.windows, 200), args.rounds)
        return
    device = resolve_device(args.device)
    keep_freed_memory()  # as `ptblm train` does; for both loops, so the ratio stays fair

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    if args.precisions is None:
        args.precisions = ["fp32", "bf16"]
        if device.type == "cpu" and not cpu_has_native_bf16():
            args.precisions = ["fp32"]
            print("this CPU has no native bf16 (AVX-512 BF16 or AMX): fp32 only")
    if args.ptb:
        started = time.perf_counter()
        load_corpus(corpus_dir=args.ptb)
        print(f"loading PTB (read, tokenize, number): {time.perf_counter() - started:.2f} s")
    print(f"{args.windows} windows x {args.rounds} rounds, best round of each")
    print(f"{'config':8} {'precision':9} {'bare w/s':>9} {'ptblm w/s':>10} {'ptblm/bare':>10}")
    results = {}
    for name in args.configs:
        for precision in args.precisions:
            config = load_config(name, [f"precision={precision}", *args.set])
            length = config.batch_size * ((args.windows + 1) * config.num_steps + 1)
            ids = zipf_ids(config.vocab_size, length)
            data = ids.view(config.batch_size, -1)
            bare, ours = 0.0, 0.0
            for _ in range(args.rounds):
                bare = max(bare, bare_words_per_second(config, data, args.windows, device))
                ours = max(ours, ptblm_words_per_second(config, ids, args.windows, device))
            results[name, precision] = ours
            print(
                f"{name:8} {precision:9} {bare:9.0f} {ours:10.0f} {ours / bare:10.3f}", flush=True
            )
    for name in args.configs:
        if (name, "fp32") in results and (name, "bf16") in results:
            ratio = results[name, "bf16"] / results[name, "fp32"]
            print(f"{name}: ptblm bf16 / fp32 = {ratio:.2f}x")


if __name__ == "__main__":
    main()
