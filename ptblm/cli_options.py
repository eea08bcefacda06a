"""The command-line options that several `ptblm` commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Where the PTB download is cached (DIR/ptb/).")
]
CorpusDir = Annotated[
    Path | None,
    typer.Option(
        "--corpus",
        help="Train/evaluate on your own corpus: a directory with ptb.train.txt, ptb.valid.txt and "
        "ptb.test.txt (one sentence a line). No download, no checksum.",
    ),
]
RunsDir = Annotated[Path, typer.Option("--runs-dir", help="Parent directory of run directories.")]
Device = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda[:N].")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override a config field, e.g. --set learning_rate=0.5 (repeatable)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
