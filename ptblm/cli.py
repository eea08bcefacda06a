"""The `ptblm` command. The only module that turns errors into messages and exit codes:
2 for usage and config errors, 1 for failures at run time, 130/143 for SIGINT/SIGTERM. (Two
exits happen before or beside it: a Ctrl-C while Python imports it, __main__.py, and a second
Ctrl-C, which quits at once from the signal handler, signals.py.)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from typing import Annotated, NoReturn

import typer

from ptblm import __version__, cli_eval, cli_generate, cli_train
from ptblm.cli_options import (
    DEFAULT_RUNS_DIR,
    SHIPPED,
    AsJson,
    DataDir,
    Overrides,
    RunsDir,
    json_text,
)
from ptblm.cli_train import command_line
from ptblm.config import (
    config_to_yaml,
    load_config,
)
from ptblm.download import DEFAULT_DATA_DIR
from ptblm.errors import ConfigError, Interrupted, PtblmError, RankFailed

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
def download(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Download the three PTB files into DATA_DIR/ptb/ and verify their sha256.

    Set PTBLM_DATA_URL to fetch from a mirror (http, https or file URL of the folder, or the
    folder itself).
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
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """What to paste into a bug report: versions, CPU, GPUs, supported precisions, the corpus."""
    from ptblm.info import collect, render

    details = collect(data_dir)
    typer.echo(json.dumps(details, indent=2) if as_json else render(details))


# The commands with more to them have modules of their own.
app.command(short_help="Train a config (or --resume a run), validate, test.")(cli_train.train)
app.command("eval", short_help="Perplexity of runs or checkpoints on a split or a text.")(
    cli_eval.eval_
)
app.command(short_help="Sample text from a trained model.")(cli_generate.generate)


@app.command(short_help="A table of every run: status, perplexities, speed.")
def runs(runs_dir: RunsDir = DEFAULT_RUNS_DIR, as_json: AsJson = False) -> None:
    """List every run: config, seed, status, epochs, best valid, test, time and speed; runs that
    differ only in their seed as mean +- std beside the published row."""
    from ptblm.run_table import read_runs, render, seed_groups

    if as_json and not runs_dir.exists():  # nothing trained yet: an empty table for scripts
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


def stdout_failed(error: OSError) -> bool:
    """Was `error` a failed write of the output? Library code turns the errors of the files it
    writes into ptblm's own, which name the file; a write to stdout names none."""
    return error.filename is None and error.errno in (
        errno.EPIPE, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG,
    )  # fmt: skip


def main() -> None:
    # A path or name of bytes that are not UTF-8 (`--name $'a\xffb'`) is shown escaped, not a
    # UnicodeEncodeError; stderr does so already.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="backslashreplace")
    try:
        code = app(prog_name="ptblm", standalone_mode=False)
    except PtblmError as error:
        rank = int(os.environ.get("RANK", "0"))
        with contextlib.suppress(OSError):  # a terminal that hung up (SIGHUP): the code still says
            if isinstance(error, Interrupted):
                if rank == 0:
                    print(error, file=sys.stderr)
            elif rank == 0:
                print(f"error: {error}", file=sys.stderr)
            elif not isinstance(error, (ConfigError, RankFailed)):  # rank 0 says those
                print(f"error (rank {rank}): {error}", file=sys.stderr)
        leave(error.exit_code)
    except OSError as error:
        if not stdout_failed(error):
            if error.filename is None:
                raise
            # A file or directory the library met unprepared, as an unreadable (another user's)
            # run directory: named, with the system's reason, no traceback.
            denied = isinstance(error, PermissionError)
            fix = " Check its permissions, or use another path." if denied else ""
            with contextlib.suppress(OSError):  # a terminal that hung up: the code still says
                print(f"error: {error.filename}: {error.strerror or error}.{fix}", file=sys.stderr)
            leave(1)
        from ptblm.progress import silence_stdout

        silence_stdout()  # and so no error again at exit, when Python flushes it
        if error.errno != errno.EPIPE:  # the reader of a pipe that left (| head) knows
            print(f"error: cannot write the output ({error.strerror}).", file=sys.stderr)
        sys.exit(1)
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
    leave(code if isinstance(code, int) else 0)


def leave(code: int) -> NoReturn:
    """Exit with `code`. A torchrun worker has left its process group by then, but a
    communication thread of torch's may still be alive at interpreter exit, where C++ aborts
    (SIGABRT, about one exit in ten: after a stop, a refused --resume, or a finished run alike):
    it leaves without that teardown."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
