"""`ptblm generate`: text sampled from a model, streamed word by word. cli.py registers it and
turns its errors into messages and exit codes.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer

from ptblm.cli_options import DEFAULT_RUNS_DIR, RunsDir, checkpoints_of
from ptblm.errors import ConfigError, counted, quote


def generate(
    target: Annotated[
        Path | None,
        typer.Argument(
            metavar="RUN_OR_CKPT",
            help="A run directory (its best.pt, else last.pt; a run's name alone looks under "
            "--runs-dir) or a checkpoint file. Default: the newest run.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str,
        typer.Option(
            "--prompt",
            metavar="TEXT",
            help="Text the model continues (PTB tokens; default: none, the text starts a "
            "sentence).",
        ),
    ] = "",
    words: Annotated[
        int, typer.Option("--words", metavar="N", help="How many words to sample.")
    ] = 100,
    temperature: Annotated[
        float, typer.Option("--temperature", metavar="X", help="> 0; below 1 is more conservative.")
    ] = 1.0,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", metavar="K", help="Sample among the K likeliest words only (0: all)."
        ),
    ] = 0,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", metavar="N", help="The same seed gives the same text (default: a fresh one)."
        ),
    ] = None,
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
    device: Annotated[
        str,
        typer.Option(
            "--device",
            metavar="DEVICE",
            help="cpu (default: the same text on every machine) or cuda.",
        ),
    ] = "cpu",
) -> None:
    """Sample text from a model; `<eos>` prints as a line break."""
    from ptblm.generate import sampling_problems

    if problems := sampling_problems(temperature, top_k, words, seed):  # before anything loads
        flags = [f"--{name.replace('_', '-')} {value}: {rule}." for name, value, rule in problems]
        raise ConfigError(flags)
    from ptblm.checkpoint import checkpoint_config, model_from_checkpoint, vocab_dict
    from ptblm.checkpoint_load import load_checkpoint
    from ptblm.generate import sample
    from ptblm.memory import check_fits, model_bytes
    from ptblm.runtime import resolve_device
    from ptblm.text import UNK, word_ids

    torch_device = resolve_device(device)
    path = checkpoints_of([target] if target else None, runs_dir)[0]
    checkpoint = load_checkpoint(path)
    if target is None:  # which run "the newest" was
        typer.echo(f"from {path}", err=True)
    vocab_words = checkpoint["vocab"]
    vocab = vocab_dict(vocab_words)
    prompt_ids, unknown = word_ids(prompt.split(), vocab)
    if unknown and not prompt_ids:
        raise ConfigError(f"--prompt: {quote(unknown[0])} is not in the model's vocabulary.")
    if unknown:
        unknown = list(dict.fromkeys(unknown))
        names = ", ".join(quote(word) for word in unknown[:10])
        names += f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        are, them = ("is", "it") if len(unknown) == 1 else ("are", "them")
        typer.echo(
            f"note: {names} {are} not in the vocabulary; the model reads {them} as {UNK}.",
            err=True,
        )
    if seed is None:
        seed = secrets.randbelow(2**31)
        typer.echo(f"seed {seed} (--seed {seed} gives this text again)", err=True)
    model = model_from_checkpoint(checkpoint, path)
    if torch_device.type != "cpu":  # model_from_checkpoint checked the host's memory
        config = checkpoint_config(checkpoint, path)
        check_fits(model_bytes(config), torch_device, f"{path}'s model", "Use --device cpu.")
    sampled = sample(model.to(torch_device), vocab, prompt_ids, words, temperature, top_k, seed)
    _print_streaming([vocab_words[i] for i in prompt_ids], sampled, vocab_words, words)


def _print_streaming(prompt: list[str], sampled, vocab_words: list[str], words: int) -> None:
    """Print the prompt, then each word as it is drawn: a long text shows as it comes, and
    Ctrl-C keeps what was printed (exit 130)."""
    import itertools
    import sys

    from ptblm.errors import Interrupted
    from ptblm.generate import stream_text

    drawn = 0

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def words_drawn():
        nonlocal drawn
        for index in sampled:
            yield vocab_words[index]
            drawn += 1

    try:
        try:
            stream_text(itertools.chain(prompt, words_drawn()), write)
        finally:
            write("\n")  # the last line ends, also after Ctrl-C
    except KeyboardInterrupt:
        raise Interrupted(
            f"stopped by Ctrl-C after {drawn} of {counted(words, 'word')}.", 130
        ) from None
    except BrokenPipeError:  # the reader has gone (`| head`): stop quietly, as other tools do
        from ptblm.progress import silence_stdout

        silence_stdout()
