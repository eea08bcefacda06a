"""A finished run's results: what metrics.json holds, and what `ptblm train` prints at the end."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptblm import __version__
from ptblm.config import Config
from ptblm.errors import shell_word
from ptblm.run_files import strict
from ptblm.run_state import RunState
from ptblm.runtime import Threads, device_description

METRICS_ONLY = (
    "train_ppl", "epochs", "device", "threads", "windows_by_threads", "world_size", "precision",
    "versions", "history",
)  # fmt: skip


def run_metrics(
    summary: dict[str, Any],
    state: RunState,
    device: torch.device,
    threads: Threads | None,
    world_size: int,
) -> dict[str, Any]:
    """What metrics.json holds: the final summary (RunState.summary), with how the run was made
    and its history."""
    return {
        **summary,
        "train_ppl": strict(state.history[-1]["train_ppl"]),
        "epochs": len(state.history),  # epochs validated (the last one partial if cut short)
        "device": device_description(device),
        "threads": threads.describe() if threads else torch.get_num_threads(),
        "windows_by_threads": state.windows_by_threads,
        "world_size": world_size,
        "precision": summary["config"]["precision"],
        "versions": {
            "ptblm": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        },
        "history": state.history,
    }


def hparams(config: Config, state: RunState) -> dict[str, Any]:
    """TensorBoard's HParams row: seed, config name, --max-steps and --eval-tokens first (the
    columns that tell runs apart; 0: none), then every config field."""
    fields = config.to_dict()
    first = {"seed": fields.pop("seed"), "config_name": state.config_name or ""}
    limits = {"max_steps": state.max_steps or 0, "eval_tokens": state.eval_tokens or 0}
    return {**first, **limits, **fields}


def format_summary(metrics: dict[str, Any], run_dir: Path) -> str:
    """What `ptblm train` prints at the end, from metrics.json: the run's row beside the published
    one, or why they cannot be compared."""
    published = metrics.get("published")
    variant = ", ".join(f"{key}: {value}" for key, value in (metrics.get("variant") or {}).items())
    beside = f"; this run's model adds {variant}" if variant else ""
    wps = metrics["train_wps"] or 0
    epochs = metrics.get("epochs_trained", metrics["epochs"])

    def ppl(key: str, width: int = 8) -> str:
        value = metrics[key]  # null in the JSON: it was infinite or NaN
        return f"{'inf' if value is None else f'{value:.2f}':>{width}}"

    lines = [
        f"{'':>10} {'train':>8} {'valid':>8} {'test':>8}",
        f"{'ptblm':>10} {ppl('train_ppl')} {ppl('valid_ppl')} "
        f"{ppl('test_ppl')}   ({epochs:.3g} epochs, "
        f"{metrics['wall_seconds'] / 60:.1f} min, {wps:.0f} words/s, {metrics['device']})",
    ]
    if metrics.get("eval_tokens"):
        lines.append(
            f"Validated and tested on the first {metrics['eval_tokens']:,} tokens of each split "
            f"(--eval-tokens): not comparable with the table."
        )
    if metrics.get("cut_short"):
        limit = f"--max-steps {metrics['max_steps']}" if metrics.get("max_steps") else "its limit"
        lines.append(
            f"Cut short by {limit} after {epochs:.3g} epochs"
            + (
                f": not comparable with the published {published['config']} row."
                if published
                else "."
            )
        )
    elif published:
        lines.append(
            f"{'published':>10} {published['train']:8.2f} {published['valid']:8.2f} "
            f"{published['test']:8.2f}   (the tutorial's {published['config']} row{beside})"
        )
    by_threads = metrics.get("windows_by_threads") or {}
    if metrics["device"].startswith("cpu") and len(by_threads) > 1:
        counts = sorted(by_threads.items(), key=lambda item: -item[1])
        used = ", ".join(f"{threads} for {windows:,}" for threads, windows in counts)
        why = (
            "followed the machine's load"
            if metrics.get("threads") == "auto"
            else "changed between its resumes"
        )
        lines.append(
            f"CPU threads {why} (windows trained: {used}): a sum over another count rounds "
            f"differently, so a run repeats to the last digit only with one --threads N."
        )
    untested = metrics.get("best_untested")
    tested = "not tested (missing or damaged)" if untested else f"test {ppl('best_test_ppl', 0)}"
    lines.append(
        f"best.pt: valid {ppl('best_valid_ppl', 0)}, {tested}.  "
        f"Run directory: {run_dir}  (tensorboard --logdir {shell_word(run_dir.parent)})"
    )
    return "\n".join(lines)
