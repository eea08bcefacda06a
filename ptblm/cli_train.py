"""`ptblm train`: a new run from a config, or `--resume` of a stopped one. cli.py registers it and
turns its errors into messages and exit codes.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ptblm.cli_options import (
    DEFAULT_RUNS_DIR,
    SHIPPED,
    CorpusDir,
    Device,
    Overrides,
    RunDataDir,
    RunsDir,
    Threads,
    check_one_text_source,
)
from ptblm.config import PRECISIONS, SEED_LIMIT, load_config, resolve_config_path
from ptblm.download import DEFAULT_DATA_DIR
from ptblm.errors import ConfigError, PtblmError, quote, shell_word
from ptblm.run_files import CONFIG_FILE, run_path


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
    data_dir: RunDataDir = None,
    corpus: CorpusDir = None,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", metavar="NAME", help="Run directory name (default CONFIG-TIMESTAMP)."
        ),
    ] = None,
    device: Device = "auto",
    seed: Annotated[
        int | None,
        typer.Option("--seed", metavar="N", help="Same as --set seed=N (default 0)."),
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
            "whose perplexities are not comparable with the table. At least the config's "
            "batch_size x (num_steps + 1).",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(
            "--checkpoint-every",
            metavar="N",
            min=0,
            help="Also write last.pt every N windows (0: per epoch only). Default: the config's "
            "checkpoint_every (ptblm config show NAME).",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue the run in this directory (or of this name under --runs-dir) from "
            "its latest checkpoint (last.pt, or best.pt where that is further on).",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the final summary.")
    ] = False,
) -> None:
    """Train a model, validate each epoch, test with the table's protocol, save the run."""
    overrides = list(overrides or [])
    set_keys = {override.partition("=")[0].strip() for override in overrides}
    for key, value in (
        ("seed", seed),
        ("precision", precision),
        ("checkpoint_every", checkpoint_every),
    ):
        if value is not None:
            if key in set_keys:  # which one was meant? neither silently
                flag = f"--{key.replace('_', '-')}"
                raise ConfigError(f"{flag} and --set {key}=... both set {key}: give one of them.")
            overrides.append(f"{key}={value}")
    check_one_text_source(corpus, data_dir)
    _check_train_options(config, overrides, resume, name, max_steps, eval_tokens)
    # In the flags' own words (load_config would name `seed` and `precision`)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision}: use {', '.join(PRECISIONS)}.")
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"--seed {seed}: use an integer from 0 to {SEED_LIMIT - 1}.")
    for option, value in (("--runs-dir", runs_dir), ("--name", name), ("--resume", resume)):
        check_run_path(option, value)
    if resume is not None:
        resume = run_path(resume, runs_dir)  # a run's name as `ptblm runs` lists it
    # Checked before torch is imported (seconds): a typo is reported at once.
    new_config = load_config(config, overrides) if resume is None else None
    from ptblm.distributed import init_distributed, shutdown
    from ptblm.progress import silence_stdout
    from ptblm.results import format_summary
    from ptblm.runtime import Threads as ComputeThreads
    from ptblm.runtime import check_precision, keep_freed_memory, resolve_device
    from ptblm.signals import ignore_termination

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
            data_dir = data_dir or DEFAULT_DATA_DIR
            # --threads too: a CPU run repeats to the last digit on as many threads
            again = again_flags(data_dir, corpus, **limits, threads=threads)
            trainer = _new_trainer(
                config, new_config, data_dir, corpus, runs_dir, name, limits, again, torch_device,
                dist, not quiet, compute_threads,
            )  # fmt: skip
        metrics = trainer.run()
    except PtblmError:
        if dist.enabled:  # until rank 0 has said what stopped the run: signals.py
            ignore_termination()
        raise
    finally:
        shutdown(dist)
    if metrics is not None:
        try:
            typer.echo(format_summary(metrics, trainer.run_dir.path))
        except OSError:  # stdout closed or full: the run is saved and done all the same
            silence_stdout()


def check_run_path(option: str, value: str | Path | None, fix: str = "rename it") -> None:
    """A run's path must be UTF-8 text: TensorBoard names its event file as text, and cannot
    write under other bytes (Python holds them as surrogates)."""
    try:
        str(value or "").encode()
    except UnicodeEncodeError:
        shown = str(value).encode(errors="backslashreplace").decode()
        raise ConfigError(f"{option} {shown}: a run's path must be UTF-8 text; {fix}.") from None


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
            f"--name {quote(name)}: a run's name is one directory name under --runs-dir, without "
            f"'/' (use --runs-dir to train somewhere else)."
        )


def _new_trainer(
    config_arg, config, data_dir, corpus_dir, runs_dir, name, limits, again, device, dist, verbose,
    threads,
):  # fmt: skip
    from ptblm.data import load_corpus_on_all_ranks
    from ptblm.run_dir import default_run_name
    from ptblm.train import Trainer

    label = config_label(config_arg)
    if name is None:  # named after the config file
        check_run_path("--config", label, "the run is named after it: give it a --name")
    corpus = load_corpus_on_all_ranks(data_dir, corpus_dir, dist, device, verbose)
    # The ranks' clocks may straddle a second: rank 0 names the run.
    default = dist.broadcast(default_run_name(label))
    return Trainer(
        config,
        corpus,
        Path(runs_dir) / (name or default),
        device,
        **limits,
        command=command_line(),
        again=again,
        threads=threads,
        config_name=label,
        verbose=verbose,
        dist=dist,
        unique_name=name is None,
    )


def _resume_trainer(run_dir: Path, data_dir, corpus_dir, device, dist, verbose, threads):
    from ptblm.checkpoint import check_same_text, corpus_dir_for, data_dir_for
    from ptblm.data import load_corpus_on_all_ranks
    from ptblm.resume import load_resumable
    from ptblm.train import Trainer

    checkpoint, saved, path = load_resumable(run_dir)
    corpus_dir = corpus_dir_for(checkpoint, corpus_dir)
    data_dir = data_dir_for(checkpoint, data_dir)
    corpus = load_corpus_on_all_ranks(data_dir, corpus_dir, dist, device, verbose)
    check_same_text(checkpoint, corpus, path)
    lost_config = not (run_dir / CONFIG_FILE).exists()
    # Older checkpoints may lack them; restore_training refuses a damaged one before any write.
    limits = {key: checkpoint.get(key) for key in ("max_steps", "eval_tokens")}
    trainer = Trainer(
        saved,
        corpus,
        run_dir,
        device,
        command=command_line(),
        again=again_flags(data_dir, corpus_dir, **limits),  # for a config.yaml written anew
        verbose=verbose,
        resume=(checkpoint, path),
        dist=dist,
        threads=threads,
    )
    if lost_config:
        trainer.progress.say(f"{run_dir / CONFIG_FILE} was missing: written anew from {path.name}.")
    if not checkpoint["finished"]:
        trainer.progress.say(
            f"Resuming {run_dir} at step {checkpoint['global_step']} "
            f"(epoch {checkpoint['epoch'] + 1}, window {checkpoint['window']})."
        )
    return trainer


def command_line() -> str:
    return shlex.join(["ptblm", *sys.argv[1:]])


def again_flags(data_dir: Path, corpus_dir: Path | None, **given: int | None) -> str:
    """What the run's config.yaml does not hold, as the flags that train the same run again:
    ' --max-steps 80 --corpus my_corpus'."""
    flags = [f"--{key.replace('_', '-')} {value}" for key, value in given.items() if value]
    if corpus_dir is not None:
        flags.append(f"--corpus {shell_word(corpus_dir)}")
    elif Path(data_dir) != DEFAULT_DATA_DIR:
        flags.append(f"--data-dir {shell_word(data_dir)}")
    return "".join(f" {flag}" for flag in flags)


def config_label(config_arg: str) -> str:
    """The name a run is listed under: a shipped config's or a YAML file's, or for another run's
    config.yaml (its "Train again with" line) that run's own."""
    from ptblm.run_files import config_name_of

    path = resolve_config_path(config_arg)
    return (config_name_of(path.parent) if path.name == CONFIG_FILE else None) or path.stem
