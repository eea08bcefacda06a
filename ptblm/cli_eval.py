"""`ptblm eval`: perplexity of a model or an ensemble on a split or a text file, plain or adapted
(cache, dynamic evaluation). cli.py registers it and turns its errors into messages and exit
codes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ptblm.cli_options import (
    DEFAULT_RUNS_DIR,
    AsJson,
    Cache,
    CacheLambda,
    CacheTheta,
    CacheWindow,
    CorpusDir,
    Device,
    Dynamic,
    DynamicDecay,
    DynamicLr,
    DynamicSegment,
    RunDataDir,
    RunsDir,
    Threads,
    Tune,
    check_one_text_source,
    checkpoints_of,
    json_text,
)
from ptblm.config import CELLS
from ptblm.download import SPLITS
from ptblm.errors import ConfigError, counted, shell_word

Targets = Annotated[
    list[Path] | None,
    typer.Argument(
        metavar="RUN_OR_CKPT",
        help="Run directories (their best.pt, else last.pt; a run's name alone looks under "
        "--runs-dir) or checkpoint files; several are evaluated as an ensemble. Default: the "
        "newest run.",
        show_default=False,
    ),
]
Cell = Annotated[
    str | None,
    typer.Option(
        "--cell",
        metavar="CELL",
        help="Run the LSTM with another cell than the checkpoint's: fused or reference.",
    ),
]


def eval_(
    targets: Targets = None,
    split: Annotated[
        str | None, typer.Option("--split", metavar="SPLIT", help="test (default), valid or train.")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", metavar="N", min=1, help="Default 1: the table's protocol."),
    ] = None,
    num_steps: Annotated[
        int | None,
        typer.Option(
            "--num-steps",
            metavar="N",
            min=1,
            help="Window length (default: long windows with batch size 1, "
            "else the config's num_steps).",
        ),
    ] = None,
    text: Annotated[
        Path | None,
        typer.Option(
            "--text",
            metavar="FILE",
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
    data_dir: RunDataDir = None,
    corpus: CorpusDir = None,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    device: Device = "auto",
    cell: Cell = None,
    cache: Cache = False,
    cache_window: CacheWindow = None,
    cache_theta: CacheTheta = None,
    cache_lambda: CacheLambda = None,
    dynamic: Dynamic = False,
    dynamic_lr: DynamicLr = None,
    dynamic_decay: DynamicDecay = None,
    dynamic_segment: DynamicSegment = None,
    tune: Tune = False,
    threads: Threads = None,
    as_json: AsJson = False,
) -> None:
    """Perplexity of a checkpoint, or of an ensemble of several (their distributions averaged),
    on a split (default: test, batch size 1, the table's protocol) or on a text file; with
    --cache and/or --dynamic, of one checkpoint adapting to what it reads."""
    from ptblm.runtime import Threads as ComputeThreads
    from ptblm.runtime import resolve_device

    adapting = _adaptation(
        {"window": cache_window, "theta": cache_theta, "lam": cache_lambda} if cache else None,
        {"lr": dynamic_lr, "decay": dynamic_decay, "segment": dynamic_segment} if dynamic else None,
        [cache_window, cache_theta, cache_lambda],
        [dynamic_lr, dynamic_decay, dynamic_segment],
        tune,
    )
    windows = (batch_size, num_steps)
    _check_eval_options(adapting, targets, text, split, windows, per_line, reset_each_line, cell)
    check_one_text_source(corpus, data_dir)
    ComputeThreads(threads)
    if text is not None:
        from ptblm.text import check_text

        check_text(text)  # a bad file is refused before anything loads
    paths = checkpoints_of(targets, runs_dir)
    torch_device = resolve_device(device)
    if text is not None and adapting:
        _eval_text_adapted(paths[0], text, torch_device, cell, as_json, adapting, data_dir, corpus)
    elif text is not None:
        _eval_text(paths, text, per_line, reset_each_line, torch_device, cell, as_json)
    elif adapting:
        from ptblm.adapt import describe, evaluate_checkpoint_adapted

        result = evaluate_checkpoint_adapted(
            paths[0], split or "test", data_dir, corpus, torch_device, cell, *adapting
        )
        typer.echo(json_text(result) if as_json else describe(result))
        _note_eval_tokens(result, split or "test")
    else:
        _eval_split(paths, split or "test", batch_size or 1, num_steps, data_dir, corpus,
                    torch_device, cell, as_json)  # fmt: skip


def _check_eval_options(adapting, targets, text, split, windows, per_line, reset_each_line, cell):
    if cell is not None and cell not in CELLS:
        raise ConfigError(f"--cell {cell}: use {' or '.join(CELLS)}.")
    if adapting and (len(targets or []) > 1 or any(windows) or per_line or reset_each_line):
        raise ConfigError(
            "--cache and --dynamic score one checkpoint with the table's protocol (batch size 1, "
            "the state carried) and give the whole text's perplexity: drop the other "
            "checkpoints, --batch-size, --num-steps, --per-line and --reset-each-line."
        )
    if text is None and (per_line or reset_each_line):
        raise ConfigError("--per-line and --reset-each-line go with --text FILE.")
    for target in targets or []:
        if text is None and target.suffix == ".txt" and target.is_file():
            raise ConfigError(
                f"{target} is a text file, not a run or checkpoint: score it with "
                f"ptblm eval --text {shell_word(target)} [RUN_DIR]."
            )
    if text is not None and (split or any(windows)):
        raise ConfigError(
            "--text scores the file as one stream with batch size 1: drop --split, --batch-size "
            "and --num-steps."
        )
    if split is not None and split not in SPLITS:
        raise ConfigError(f"--split {split}: use test, valid or train.")


def _eval_split(paths, split, batch_size, num_steps, data_dir, corpus, device, cell, as_json):
    from ptblm.evaluate import evaluate_checkpoints

    result = evaluate_checkpoints(
        paths, split, batch_size, num_steps, data_dir, corpus, device, not as_json, cell
    )
    if as_json:
        typer.echo(json_text(result))
        _note_eval_tokens(result, split)  # on stderr: stdout stays one JSON object
        return
    what = f" of the ensemble of {len(paths)} models:" if len(paths) > 1 else ""
    typer.echo(
        f"{split} perplexity{what} {result['perplexity']:.3f} over "
        f"{counted(result['tokens'], 'token')} (batch size {batch_size}, {result['seconds']:.1f} s)"
        + ("" if len(paths) > 1 else f" {paths[0]}")
    )
    _note_eval_tokens(result, split)
    _echo_members(result.get("members", []), result.get("published"), split)


def _note_eval_tokens(result: dict[str, Any], split: str) -> None:
    """On stderr: a run validated and tested on a prefix (--eval-tokens) printed other numbers
    (an ensemble: any of its members' runs)."""
    members = result.get("members", [])
    limits = [entry.get("run_eval_tokens") for entry in [result, *members]]
    prefixes = [limit for limit in limits if limit]
    if not prefixes or split == "train":
        return
    whose = f"{len(prefixes)} of its {len(members)} members' runs" if members else "its run"
    tokens = " / ".join(f"{n:,}" for n in sorted(set(prefixes)))
    typer.echo(
        f"Note: {whose} validated and tested on the first {tokens} tokens of the valid and test "
        f"splits (--eval-tokens); this is the whole {split} split.",
        err=True,
    )


def _adaptation(cache, dynamic, cache_values, dynamic_values, tune):
    """(CacheSettings or None, DynamicSettings or None, tune) from the options, None when
    neither is asked for; ConfigError for a setting without its switch or out of range."""
    if cache is None and any(value is not None for value in cache_values):
        raise ConfigError("--cache-window, --cache-theta and --cache-lambda go with --cache.")
    if dynamic is None and any(value is not None for value in dynamic_values):
        raise ConfigError("--dynamic-lr, --dynamic-decay and --dynamic-segment go with --dynamic.")
    tuned = [*cache_values, *dynamic_values[:2]]  # the grids' (adapt.py); the segment is kept
    if tune and any(value is not None for value in tuned):
        raise ConfigError(
            "--tune chooses --cache-window, --cache-theta, --cache-lambda, --dynamic-lr and "
            "--dynamic-decay on the validation split: drop them, or drop --tune."
        )
    if cache is None and dynamic is None:
        if tune:
            raise ConfigError("--tune chooses the settings of --cache and/or --dynamic: add one.")
        return None
    from ptblm.cache import CacheSettings
    from ptblm.dynamic import DynamicSettings

    def settings(kind, values):
        return kind(**{key: value for key, value in values.items() if value is not None})

    return (
        settings(CacheSettings, cache) if cache is not None else None,
        settings(DynamicSettings, dynamic) if dynamic is not None else None,
        tune,
    )


def _echo_members(members: list[dict[str, Any]], published: dict | None, split: str) -> None:
    for member in members:
        typer.echo(f"  member {member['perplexity']:9.3f}  {member['checkpoint']}")
    if published:
        typer.echo(
            f"  the paper's {published['members']} {published['config']} models averaged: "
            f"{split} {published[split]}"
        )


def _eval_text(paths, text, per_line, reset_each_line, device, cell, as_json) -> None:
    import time

    from ptblm.checkpoint import vocab_dict
    from ptblm.ensemble import load_members
    from ptblm.runtime import keep_freed_memory
    from ptblm.text import TextScorer, check_covered, read_lines

    # Each window allocates and frees the same (500 x vocab) logits; without this glibc hands
    # them back to the OS and faults them in again every window (1.8x the time on a 2-core CPU).
    keep_freed_memory()
    members = load_members(paths, device, cell)
    started = time.perf_counter()
    vocab = vocab_dict(members[0].checkpoint["vocab"])
    check_covered(read_lines(text), vocab)
    # The file is streamed: each line's row is printed when it is scored, never all held.
    scorer = TextScorer([m.model for m in members], vocab, reset_each_line, device)
    for line in scorer.rows(read_lines(text)):
        if per_line:
            typer.echo(json_text(line))
    total = scorer.total
    total.update(file=str(text), checkpoint=[str(path) for path in paths])
    total["seconds"] = round(time.perf_counter() - started, 3)
    if as_json:
        typer.echo(json_text({"total": total} if per_line else total))
        return
    reading = "each line on its own" if reset_each_line else "state carried across lines"
    summary = (
        f"{text}: perplexity {total['perplexity']:.3f} over {counted(total['tokens'], 'token')} "
        f"({reading}); "
        f"{total['unknown_words']} of {counted(total['words'], 'word')} ({total['unknown_share']:.2%}) not "
        f"in the vocabulary, read as <unk>"
    )
    typer.echo(summary, err=per_line)  # stdout holds the JSON lines then
    if not per_line:
        members_rows = [
            {"checkpoint": str(path), "perplexity": ppl}
            for path, ppl in zip(paths, total.get("member_perplexities", []), strict=False)
        ]
        _echo_members(members_rows, None, "")


def _eval_text_adapted(path, text, device, cell, as_json, adapting, data_dir, corpus) -> None:
    """--text with --cache/--dynamic: the plain and the adapted perplexity of the file."""
    from ptblm.adapt import describe, score_text_adapted

    total = score_text_adapted(path, text, data_dir, corpus, device, cell, *adapting)
    typer.echo(json_text(total) if as_json else describe(total))
