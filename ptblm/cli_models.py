"""The `ptblm` commands that use trained models and runs: eval, generate, runs.

cli.py registers them and turns their errors into messages and exit codes.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

import typer

from ptblm.cli_options import AsJson, CorpusDir, DataDir, Device, RunsDir
from ptblm.config import CELLS
from ptblm.download import SPLITS
from ptblm.errors import ConfigError

Targets = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Run directories (their best.pt) or checkpoint files; several are evaluated as an "
        "ensemble. Default: the newest run.",
        show_default=False,
    ),
]
Cell = Annotated[
    str | None, typer.Option("--cell", help="Run the LSTM with another cell: fused or reference.")
]


def _json(data: Any) -> str:
    """Strict JSON for scripts: an infinite or NaN perplexity (a diverged model) becomes null."""
    from ptblm.run_table import strict

    return json.dumps(strict(data), allow_nan=False)


def _checkpoints(targets: list[Path] | None, runs_dir: Path, cell: str | None) -> list[Path]:
    from ptblm.runs import resolve_checkpoint

    if cell is not None and cell not in CELLS:
        raise ConfigError(f"--cell {cell}: use {' or '.join(CELLS)}.")
    return [resolve_checkpoint(target, runs_dir) for target in targets or [None]]


def eval_(
    targets: Targets = None,
    split: Annotated[
        str | None, typer.Option("--split", help="test (default), valid or train.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Default 1: the table's protocol.")
    ] = None,
    num_steps: Annotated[
        int | None,
        typer.Option(
            "--num-steps",
            min=1,
            help="Window length (default: long windows with batch size 1, "
            "else the config's num_steps).",
        ),
    ] = None,
    text: Annotated[
        Path | None,
        typer.Option(
            "--text",
            help="Score this text file instead of a split: one sentence a line, PTB tokens; "
            "unknown words are read as <unk> and counted.",
        ),
    ] = None,
    per_line: Annotated[
        bool,
        typer.Option("--per-line", help="With --text: one JSON object per input line on stdout."),
    ] = False,
    reset_each_line: Annotated[
        bool,
        typer.Option(
            "--reset-each-line",
            help="With --text: score every line on its own from a fresh state (default: the state "
            "is carried across lines, as in training and the table's test).",
        ),
    ] = False,
    data_dir: DataDir = Path("data"),
    corpus: CorpusDir = None,
    runs_dir: RunsDir = Path("runs"),
    device: Device = "auto",
    cell: Cell = None,
    as_json: AsJson = False,
) -> None:
    """Perplexity of a checkpoint, or of an ensemble of several (their distributions averaged),
    on a split (default: test, batch size 1, the table's protocol) or on a text file."""
    from ptblm.runtime import resolve_device

    if text is None and (per_line or reset_each_line):
        raise ConfigError("--per-line and --reset-each-line go with --text FILE.")
    if text is not None and (split or batch_size or num_steps):
        raise ConfigError(
            "--text scores the file as one stream with batch size 1: drop --split, --batch-size "
            "and --num-steps."
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split}: use test, valid or train.")
    if text is not None:
        from ptblm.text import read_text

        content = read_text(text)  # a bad file is refused before anything loads
        paths = _checkpoints(targets, runs_dir, cell)
        _eval_text(
            paths, text, content, per_line, reset_each_line, resolve_device(device), cell, as_json
        )
        return
    paths = _checkpoints(targets, runs_dir, cell)
    torch_device = resolve_device(device)
    from ptblm.evaluate import evaluate_checkpoints

    split, batch_size = split or "test", batch_size or 1
    result = evaluate_checkpoints(
        paths, split, batch_size, num_steps, data_dir, corpus, torch_device, not as_json, cell
    )
    if as_json:
        typer.echo(_json(result))
        return
    what = f" of the ensemble of {len(paths)} models:" if len(paths) > 1 else ""
    typer.echo(
        f"{split} perplexity{what} {result['perplexity']:.3f} over {result['tokens']} tokens "
        f"(batch size {batch_size}, {result['seconds']:.1f} s)"
        + ("" if len(paths) > 1 else f" {paths[0]}")
    )
    _echo_members(result.get("members", []), result.get("published"), split)


def _echo_members(members: list[dict[str, Any]], published: dict | None, split: str) -> None:
    for member in members:
        typer.echo(f"  member {member['perplexity']:9.3f}  {member['checkpoint']}")
    if published:
        typer.echo(
            f"  the paper's {published['members']} {published['config']} models averaged: "
            f"{split} {published[split]}"
        )


def _eval_text(paths, text, content, per_line, reset_each_line, device, cell, as_json) -> None:
    import time

    from ptblm.checkpoint import vocab_dict
    from ptblm.ensemble import load_members
    from ptblm.text import score_text

    members = load_members(paths, device, cell)
    started = time.perf_counter()
    vocab = vocab_dict(members[0].checkpoint["vocab"])
    total, lines = score_text([m.model for m in members], vocab, content, reset_each_line, device)
    total.update(file=str(text), checkpoint=[str(path) for path in paths])
    total["seconds"] = round(time.perf_counter() - started, 3)
    if per_line:
        for line in lines:
            typer.echo(_json(line))
    if as_json:
        typer.echo(_json({"total": total} if per_line else total))
        return
    reading = "each line on its own" if reset_each_line else "state carried across lines"
    summary = (
        f"{text}: perplexity {total['perplexity']:.3f} over {total['tokens']} tokens ({reading}); "
        f"{total['unknown_words']} of {total['words']} words ({total['unknown_share']:.2%}) not "
        f"in the vocabulary, read as <unk>"
    )
    typer.echo(summary, err=per_line)  # stdout holds the JSON lines then
    if not per_line:
        members_rows = [
            {"checkpoint": str(path), "perplexity": ppl}
            for path, ppl in zip(paths, total.get("member_perplexities", []), strict=False)
        ]
        _echo_members(members_rows, None, "")


def generate(
    target: Annotated[
        Path | None,
        typer.Argument(
            help="A run directory (its best.pt) or a checkpoint file. Default: the newest run.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str, typer.Option("--prompt", help="Text the model continues (PTB tokens).")
    ] = "",
    words: Annotated[int, typer.Option("--words", help="How many words to sample.")] = 100,
    temperature: Annotated[
        float, typer.Option("--temperature", help="> 0; below 1 is more conservative.")
    ] = 1.0,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Sample among the K likeliest words only (0: all).")
    ] = 0,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="The same seed gives the same text (default: a fresh one)."),
    ] = None,
    runs_dir: RunsDir = Path("runs"),
    device: Annotated[
        str, typer.Option("--device", help="cpu (default: the same text on every machine) or cuda.")
    ] = "cpu",
) -> None:
    """Sample text from a model; `<eos>` prints as a line break."""
    from ptblm.generate import check_sampling

    check_sampling(temperature, top_k, words, seed)  # before anything loads
    from ptblm.checkpoint import load_checkpoint, model_from_checkpoint, vocab_dict
    from ptblm.generate import as_text
    from ptblm.generate import generate as sample
    from ptblm.runtime import resolve_device
    from ptblm.text import UNK, word_ids

    path = _checkpoints([target] if target else None, runs_dir, None)[0]
    checkpoint = load_checkpoint(path)
    vocab_words = checkpoint["vocab"]
    vocab = vocab_dict(vocab_words)
    prompt_ids, unknown = word_ids(prompt.split(), vocab)
    if unknown and not prompt_ids:
        raise ConfigError(f"--prompt: {unknown[0]!r} is not in the model's vocabulary.")
    for word in dict.fromkeys(unknown):
        typer.echo(
            f"note: {word!r} is not in the vocabulary; the model reads it as {UNK}.", err=True
        )
    if seed is None:
        seed = secrets.randbelow(2**31)
        typer.echo(f"seed {seed} (--seed {seed} gives this text again)", err=True)
    model = model_from_checkpoint(checkpoint, path).to(resolve_device(device))
    sampled = sample(model, vocab, prompt_ids, words, temperature, top_k, seed)
    typer.echo(as_text([vocab_words[i] for i in prompt_ids + sampled]))


def runs(runs_dir: RunsDir = Path("runs"), as_json: AsJson = False) -> None:
    """List every run: config, seed, status, epochs, best valid, test, time and speed; runs that
    differ only in their seed as mean +- std beside the published row."""
    from ptblm.run_table import read_runs, render, seed_groups

    rows = read_runs(runs_dir)
    groups = seed_groups(rows)
    if as_json:
        typer.echo(_json({"runs": rows, "seed_groups": groups}))
    else:
        typer.echo(render(rows, groups, runs_dir))
