"""The command-line options that several `ptblm` commands share, and reading the arguments they
share: checkpoints to load, JSON to print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ptblm.config import shipped_configs
from ptblm.errors import ConfigError

SHIPPED = ", ".join(shipped_configs())  # for help texts and messages
DEFAULT_RUNS_DIR = Path("runs")
DataDir = Annotated[
    Path,
    typer.Option("--data-dir", metavar="DIR", help="Where the PTB download is cached (DIR/ptb/)."),
]
RunDataDir = Annotated[  # --resume and eval: where unset, the data directory the run trained with
    Path | None,
    typer.Option(
        "--data-dir",
        metavar="DIR",
        help="Where the PTB download is cached (DIR/ptb/). Default: data, or for a --resume or an "
        "eval the directory the run was trained with, while its ptb/ is there.",
    ),
]
CorpusDir = Annotated[
    Path | None,
    typer.Option(
        "--corpus",
        metavar="DIR",
        help="Train/evaluate on your own corpus: a directory with ptb.train.txt, ptb.valid.txt and "
        "ptb.test.txt (one sentence a line). No download, no checksum.",
    ),
]


RunsDir = Annotated[
    Path, typer.Option("--runs-dir", metavar="DIR", help="Parent directory of run directories.")
]
Device = Annotated[
    str,
    typer.Option("--device", metavar="DEVICE", help="auto (CUDA when present), cpu or cuda[:N]."),
]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        metavar="KEY=VALUE",
        help="Override a config field, e.g. --set learning_rate=0.5 (repeatable).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
Threads = Annotated[
    int | None,
    typer.Option(
        "--threads",
        metavar="N",
        min=1,
        help="CPU threads to compute with, at most the cores (default: the cores other work "
        "leaves free, re-checked as the run goes; all of them when the machine is idle).",
    ),
]

# ptblm eval's adaptive evaluation (adapt.py); unset values take CacheSettings' and
# DynamicSettings' defaults, the values tuned for the small reproduction, which the help states
# (test_cli_eval checks that they agree).
Cache = Annotated[
    bool, typer.Option("--cache", help="Mix in a continuous cache (Grave et al. 2017).")
]
CacheWindow = Annotated[
    int | None,
    typer.Option(
        "--cache-window",
        metavar="N",
        help="Positions the cache looks back, 1 to 1,000,000 (default 500).",
    ),
]
CacheTheta = Annotated[
    float | None,
    typer.Option(
        "--cache-theta", metavar="X", help="Scale of the cache's dot products, >= 0 (default 0.3)."
    ),
]
CacheLambda = Annotated[
    float | None,
    typer.Option(
        "--cache-lambda",
        metavar="X",
        help="The cache's weight in the mixture, [0, 1] (default 0.1).",
    ),
]
Dynamic = Annotated[
    bool,
    typer.Option("--dynamic", help="Dynamic evaluation: learn from the text as it is scored."),
]
DynamicLr = Annotated[
    float | None,
    typer.Option("--dynamic-lr", metavar="X", help="Step size per segment, >= 0 (default 0.3)."),
]
DynamicDecay = Annotated[
    float | None,
    typer.Option(
        "--dynamic-decay",
        metavar="X",
        help="Pull towards the trained weights per segment, [0, 1] (default 0).",
    ),
]
DynamicSegment = Annotated[
    int | None,
    typer.Option(
        "--dynamic-segment", metavar="N", help="Predictions per update, 1 to 500 (default 20)."
    ),
]
Tune = Annotated[
    bool,
    typer.Option(
        "--tune",
        help="Choose the cache's and dynamic evaluation's settings on the validation split (a "
        "small grid), then score the split or text with them.",
    ),
]


def check_one_text_source(corpus: Path | None, data_dir: Path | None) -> None:
    """--corpus and --data-dir both say where the text is: which one was meant? Neither silently."""
    if corpus is not None and data_dir is not None:
        raise ConfigError(
            "--corpus and --data-dir both say where the text is: --corpus DIR reads the files in "
            "DIR, --data-dir DIR PTB in DIR/ptb (downloaded if absent). Give one."
        )


def json_text(data: Any) -> str:
    """Strict JSON for scripts: an infinite or NaN perplexity (a diverged model) becomes null."""
    from ptblm.run_files import strict

    return json.dumps(strict(data), allow_nan=False)


def checkpoints_of(targets: list[Path] | None, runs_dir: Path) -> list[Path]:
    """The checkpoint files that run directories or files name (the newest run's for none)."""
    from ptblm.run_files import resolve_checkpoint

    return [resolve_checkpoint(target, runs_dir) for target in targets or [None]]
