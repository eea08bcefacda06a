"""The `ptblm` command. The only module that turns errors into messages and exit codes:
2 for usage and config errors, 1 for failures at run time, 130/143 for SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ptblm import __version__, cli_eval, cli_generate
from ptblm.cli_options import (
    AsJson,
    CorpusDir,
    DataDir,
    Device,
    Overrides,
    RunsDir,
    Threads,
    json_text,
)
from ptblm.config import (
    PRECISIONS,
    config_to_yaml,
    load_config,
    resolve_config_path,
    shipped_configs,
)
from ptblm.errors import ConfigError, Interrupted, PtblmError

# Typer prints each argument's Python type beside it ("RUN_OR_CKPT <list[Path]>"), which reads like
# internals; the argument's name already says what to give.
if hasattr(typer.core.TyperArgument, "display_type_rich"):
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None

app = typer.Typer(
    name="ptblm",
    help="Train and evaluate Zaremba et al.'s LSTM language models on the Penn Treebank.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Inspect configs.", no_args_is_help=True)
SHIPPED = ", ".join(shipped_configs())
app.add_typer(config_app, name="config")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ptblm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    pass


@app.command(short_help="Fetch the PTB files and verify their checksums.")
def download(data_dir: DataDir = Path("data")) -> None:
    """Download the three PTB files into DATA_DIR/ptb/ and verify their sha256.

    Set PTBLM_DATA_URL to fetch from a mirror (http, https or file URL of the folder).
    """
    from ptblm.download import SHA256, download_ptb

    folder = download_ptb(data_dir)
    typer.echo(f"{folder}: {', '.join(SHA256)} present and verified.")


@config_app.command("show")
def config_show(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME|PATH", help=f"A shipped config ({SHIPPED}) or a YAML path."),
    ],
    overrides: Overrides = None,
) -> None:
    """Print the resolved config (with overrides applied) as YAML."""
    config = load_config(name, overrides or [])
    typer.echo(config_to_yaml(config, command_line()), nl=False)


@config_app.command("list", short_help="The shipped configs: size, epochs, published test, times.")
def config_list() -> None:
    """List the shipped configs: size, epochs, parameters, the published test perplexity, and
    the expected training time of a full run on a CPU and on a GPU."""
    from ptblm.published import shipped_config_table

    typer.echo(shipped_config_table())


@app.command(short_help="Versions, CPU, GPUs and corpus: what a bug report needs.")
def info(
    data_dir: DataDir = Path("data"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What to paste into a bug report: versions, CPU, GPUs, supported precisions, the corpus."""
    from ptblm.info import collect, render

    details = collect(data_dir)
    typer.echo(json.dumps(details, indent=2) if as_json else render(details))


@app.command(short_help="Train a config (or --resume a run), validate, test.")
def train(
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            "-c",
            metavar="NAME|PATH",
            help=f"A shipped config ({SHIPPED}) or a YAML path.",
        ),
    ] = None,
    overrides: Overrides = None,
    data_dir: DataDir = Path("data"),
    corpus: CorpusDir = None,
    runs_dir: RunsDir = Path("runs"),
    name: Annotated[
        str | None,
        typer.Option(
            "--name", metavar="NAME", help="Run directory name (default CONFIG-TIMESTAMP)."
        ),
    ] = None,
    device: Device = "auto",
    seed: Annotated[
        int | None, typer.Option("--seed", metavar="N", help="Same as --set seed=N (default 0).")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision", metavar="PRECISION", help="fp32 (default, faithful), bf16 or fp16."
        ),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            "--max-steps",
            metavar="N",
            min=1,
            help="Stop after N training windows, then validate, test and save.",
        ),
    ] = None,
    threads: Threads = None,
    eval_tokens: Annotated[
        int | None,
        typer.Option(
            "--eval-tokens",
            metavar="N",
            min=2,
            help="Validate and test on the first N tokens of each split only: a quick smoke run "
            "whose perplexities are not comparable with the table.",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            metavar="N",
            min=0,
            help="Also write last.pt every N windows (0: per epoch only).",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue the run in this directory from its last.pt.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the final summary.")
    ] = False,
) -> None:
    """Train a model, validate each epoch, test with the table's protocol, save the run."""
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: use {', '.join(PRECISIONS)}.")
    overrides = list(overrides or [])
    for key, value in (
        ("seed", seed),
        ("precision", precision),
        ("checkpoint_every", checkpoint_every),
    ):
        if value is not None:
            overrides.append(f"{key}={value}")
    _check_train_options(config, overrides, resume, name, max_steps, eval_tokens)
    # Checked before torch is imported (seconds): a typo is reported at once.
    new_config = load_config(config, overrides) if resume is None else None
    from ptblm.distributed import init_distributed, shutdown
    from ptblm.results import format_summary
    from ptblm.runtime import Threads as ComputeThreads
    from ptblm.runtime import check_precision, keep_freed_memory, resolve_device

    torch_device = resolve_device(device)
    if new_config is not None:
        check_precision(new_config.precision, torch_device)  # before any download
    compute_threads = ComputeThreads(threads)
    keep_freed_memory()
    # Under torchrun this joins the job; otherwise it is rank 0 of 1.
    dist, torch_device = init_distributed(torch_device)
    try:
        if resume is not None:
            trainer = _resume_trainer(
                resume, data_dir, corpus, torch_device, dist, not quiet, compute_threads
            )
        else:
            limits = {"max_steps": max_steps, "eval_tokens": eval_tokens}
            trainer = _new_trainer(
                config, new_config, data_dir, corpus, runs_dir, name, limits, torch_device,
                dist, not quiet, compute_threads,
            )  # fmt: skip
        metrics = trainer.run()
    finally:
        shutdown(dist)
    if metrics is not None:
        typer.echo(format_summary(metrics, trainer.run_dir.path))


def _check_train_options(config, overrides, resume, name, max_steps, eval_tokens) -> None:
    if resume is not None:
        limits = (max_steps, name, eval_tokens)
        if config is not None or overrides or any(limit is not None for limit in limits):
            raise ConfigError(
                "--resume continues a run with its own config and limits: drop --config, --set, "
                "--seed, --precision, --checkpoint-every, --max-steps, --eval-tokens and --name."
            )
    elif config is None:
        raise ConfigError(f"say which config to train: --config NAME ({SHIPPED}) or a YAML path.")
    if name is not None and (name in ("", ".", "..") or "/" in name or "\0" in name):
        raise ConfigError(
            f"--name {name[:60]!r}: a run's name is one directory name under --runs-dir, without "
            f"'/' (use --runs-dir to train somewhere else)."
        )


def _new_trainer(
    config_arg, config, data_dir, corpus_dir, runs_dir, name, limits, device, dist, verbose, threads
):
    from ptblm.data import load_corpus_on_all_ranks
    from ptblm.run_dir import default_run_name
    from ptblm.train import Trainer

    label = resolve_config_path(config_arg).stem
    corpus = load_corpus_on_all_ranks(data_dir, corpus_dir, dist, verbose)
    # The ranks' clocks may straddle a second: rank 0 names the run.
    name = dist.broadcast(name or default_run_name(label))
    return Trainer(
        config,
        corpus,
        Path(runs_dir) / name,
        device,
        **limits,
        command=command_line(),
        limits=limit_flags(**limits),
        threads=threads,
        config_name=label,
        verbose=verbose,
        dist=dist,
    )


def _resume_trainer(run_dir: Path, data_dir, corpus_dir, device, dist, verbose, threads):
    from ptblm.checkpoint import check_vocabulary, corpus_dir_for
    from ptblm.data import load_corpus_on_all_ranks
    from ptblm.run_dir import load_resumable
    from ptblm.run_files import LAST
    from ptblm.train import Trainer

    checkpoint, saved = load_resumable(run_dir)
    corpus_dir = corpus_dir_for(checkpoint, corpus_dir)
    corpus = load_corpus_on_all_ranks(data_dir, corpus_dir, dist, verbose)
    check_vocabulary(checkpoint, corpus, run_dir / LAST)
    trainer = Trainer(
        saved,
        corpus,
        run_dir,
        device,
        command=command_line(),
        verbose=verbose,
        resume=checkpoint,
        dist=dist,
        threads=threads,
    )
    if verbose and dist.is_main and not checkpoint["finished"]:
        typer.echo(
            f"Resuming {run_dir} at step {checkpoint['global_step']} "
            f"(epoch {checkpoint['epoch'] + 1}, window {checkpoint['window']})."
        )
    return trainer


def command_line() -> str:
    return shlex.join(["ptblm", *sys.argv[1:]])


def limit_flags(**limits: int | None) -> str:
    """The run's limits that its config.yaml does not hold, as flags: ' --max-steps 80'."""
    return "".join(f" --{key.replace('_', '-')} {value}" for key, value in limits.items() if value)


# The commands that use trained models have modules of their own.
app.command("eval", short_help="Perplexity of runs or checkpoints on a split or a text.")(
    cli_eval.eval_
)
app.command(short_help="Sample text from a trained model.")(cli_generate.generate)


@app.command(short_help="A table of every run: status, perplexities, speed.")
def runs(runs_dir: RunsDir = Path("runs"), as_json: AsJson = False) -> None:
    """List every run: config, seed, status, epochs, best valid, test, time and speed; runs that
    differ only in their seed as mean +- std beside the published row."""
    from ptblm.run_table import read_runs, render, seed_groups

    if as_json and not runs_dir.is_dir():  # nothing trained yet: an empty table for scripts
        typer.echo(json_text({"runs": [], "seed_groups": []}))
        return
    rows = read_runs(runs_dir)
    groups = seed_groups(rows)
    if as_json:
        typer.echo(json_text({"runs": rows, "seed_groups": groups}))
    else:
        typer.echo(render(rows, groups, runs_dir))


def usage_error(error: Exception) -> str | None:
    """Click's usage errors (an unknown option, a value out of range) as one line in ptblm's
    voice; None for any other exception. (Typer may bring click or a copy of its own: matched by
    shape, not class.)"""
    if getattr(error, "exit_code", None) != 2 or not hasattr(error, "format_message"):
        return None
    context = getattr(error, "ctx", None)
    where = f" (see {context.command_path} --help)" if context is not None else ""
    return f"error: {error.format_message()}{where}"


def main() -> None:
    try:
        code = app(prog_name="ptblm", standalone_mode=False)
    except PtblmError as error:
        rank = int(os.environ.get("RANK", "0"))
        if isinstance(error, Interrupted):
            if rank == 0:
                print(error, file=sys.stderr)
        elif rank == 0:
            print(f"error: {error}", file=sys.stderr)
        elif not isinstance(error, ConfigError):  # every rank finds the same config errors
            print(f"error (rank {rank}): {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except Exception as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # `ptblm` or `ptblm config` alone
            print(error.ctx.get_help(), file=sys.stderr)
            sys.exit(2)
        message = usage_error(error)
        if message is None:
            if type(error).__name__ == "Abort":
                sys.exit(1)
            raise
        print(message, file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
