"""`ptblm runs`: a table of every run under a runs directory, read without torch.

A run is listed from its small summary.json (written atomically right after each checkpoint, and
after the final test), never from its checkpoints, so that dozens of large runs list at once.
Its status:
    training    a process holds the run's .lock now (the epoch shown is its last checkpoint's)
    finished    trained and tested
    stopped     stopped before the end; `ptblm train --resume RUN` continues it
    diverged    the loss or gradient became NaN or infinite, or the loss grew far past an
                untrained model's
    unreadable  its summary.json holds no status ptblm knows (edited, or from another version),
                or the directory cannot be read (another user's: "unreadable: Permission denied");
                a summary.json that is no JSON at all is taken as missing: the row comes from
                metrics.json, or says "stopped" (resumable where a checkpoint is there)
and, after it, "stalled at step N" where training warned of a stalled start (stall.py), with
", recovered" once the latest log point no longer was.
Runs whose configs differ only in their seed are summarised as mean +- std beside the published
row.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from ptblm.config import load_config, shipped_configs
from ptblm.errors import DataError, shell_word
from ptblm.run_files import (
    BEST,
    CONFIG_FILE,
    LAST,
    METRICS_FILE,
    SUMMARY_FILE,
    config_name_of,
    finite,
    is_locked,
    read_config,
    read_json,
)


def _from_older_ptblm(run_dir: Path) -> dict[str, Any] | None:
    """A run written before summary.json existed: its metrics.json (finished runs) and config.yaml."""
    metrics = read_json(run_dir / METRICS_FILE)
    if metrics is None:
        return None
    return {
        **{key: metrics.get(key) for key in ("config_name", "test_ppl", "best_test_ppl")},
        **{key: metrics.get(key) for key in ("best_valid_ppl", "train_wps", "wall_seconds")},
        **{key: metrics.get(key) for key in ("max_steps", "cut_short", "variant", "published")},
        "eval_tokens": metrics.get("eval_tokens"),
        "status": "finished",
        "config": read_config(run_dir),
        "epochs_trained": metrics.get("epochs_trained", metrics.get("epochs")),
    }


STATUSES = ("finished", "stopped", "diverged")  # as written; "training" is read from the lock
NUMBERS = ("epochs_trained", "valid_ppl", "best_valid_ppl", "test_ppl", "best_test_ppl",
           "train_wps", "wall_seconds")  # fmt: skip
COUNTS = (
    "epochs_completed",
    "window",
    "global_step",
    "diverged_at_step",
    "max_steps",
    "eval_tokens",
)


def _typed(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def _clean(summary: dict[str, Any]) -> dict[str, Any]:
    """Whatever a file holds (edited, truncated, from another version), a row the table can
    print: a value of the wrong kind, infinite or NaN becomes None."""
    row = dict(summary)
    if row.get("status") not in STATUSES:
        row["status"] = "unreadable"
    for key in NUMBERS:
        number = _typed(row.get(key), (int, float))
        row[key] = None if number is None else finite(float(number))
    for key in COUNTS:
        row[key] = _typed(row.get(key), int)
    row["config"] = _typed(row.get("config"), dict) or {}
    row["config_name"] = _typed(row.get("config_name"), str)
    row["variant"] = _typed(row.get("variant"), dict) or {}
    row["published"] = _typed(row.get("published"), dict)
    stall = _typed(row.get("stall"), dict) or {}
    step = _typed(stall.get("warned_at_step"), int)
    row["stall"] = (
        None
        if step is None
        else {"warned_at_step": step, "ongoing": stall.get("ongoing") is not False}
    )
    row["seed"] = _typed(row["config"].get("seed"), int)
    row["precision"] = _typed(row["config"].get("precision"), str)
    return row


def read_run(run_dir: Path) -> dict[str, Any] | None:
    """One row of the table; None for a directory that is not a ptblm run."""
    try:
        return _read_run(run_dir)
    except OSError as error:  # a directory another user keeps to themselves (Permission denied)
        why = error.strerror or type(error).__name__
        row = {"name": run_dir.name, "path": str(run_dir), **_clean({})}
        return {**row, "resumable": False, "unreadable": why}


def _read_run(run_dir: Path) -> dict[str, Any] | None:
    if not (run_dir / CONFIG_FILE).is_file():
        return None
    summary = read_json(run_dir / SUMMARY_FILE) or _from_older_ptblm(run_dir)
    if summary is None:  # killed before its first checkpoint, or being started
        summary = {
            "status": "stopped",
            "config": read_config(run_dir),
            "config_name": config_name_of(run_dir),
        }
    row = {"name": run_dir.name, "path": str(run_dir), **_clean(summary)}
    saved = (run_dir / LAST).is_file() or (run_dir / BEST).is_file()
    row["resumable"] = row["status"] == "stopped" and saved
    if is_locked(run_dir):
        row["status"] = "training"
    return row


def read_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run directly under runs_dir, by name (a run's name starts with its config)."""
    runs_dir = Path(runs_dir)
    try:
        if (runs_dir / CONFIG_FILE).is_file():  # a run itself
            raise DataError(
                f"{runs_dir} is a run directory, not a directory of runs: use --runs-dir "
                f"{shell_word(runs_dir.parent)}."
            )
        if runs_dir.exists() and not runs_dir.is_dir():
            raise DataError(
                f"--runs-dir {runs_dir} is a file: give the directory your runs are in."
            )
        if not runs_dir.is_dir():
            raise DataError(
                f"{runs_dir}: no such runs directory. Train a run first (ptblm train --config "
                f"small), or point --runs-dir at the directory your runs are in."
            )
        paths = sorted(runs_dir.iterdir())
    except OSError as error:  # another user's directory (Permission denied)
        raise DataError(
            f"{runs_dir}: cannot be listed ({error.strerror}). Point --runs-dir at a directory "
            f"you can read."
        ) from None
    rows = (read_run(path) for path in paths if path.is_dir())
    return [row for row in rows if row is not None]


def seed_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished runs, full length and tested on whole splits (no --eval-tokens), grouped by
    their corpus and everything in their config but the seed; a group with two seeds or more
    gets the mean and sample standard deviation of its results."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        comparable = not row.get("cut_short") and not row.get("eval_tokens")
        if row["status"] == "finished" and comparable and row.get("test_ppl"):
            config = {key: value for key, value in row["config"].items() if key != "seed"}
            corpus = _typed(row.get("splits_sha256"), dict)  # None: a run of an older ptblm
            key = json.dumps([row.get("config_name"), config, corpus], sort_keys=True)
            groups.setdefault(key, []).append(row)
    summaries = []
    for members in groups.values():
        if len({row["seed"] for row in members}) < 2:
            continue
        summary = {
            "config_name": members[0].get("config_name"),
            "changed": _changed(members[0]),
            "runs": [row["name"] for row in members],
            "seeds": [row["seed"] for row in members],
            "published": members[0].get("published"),
            "variant": members[0].get("variant") or {},
        }
        for key in ("best_valid_ppl", "test_ppl", "best_test_ppl"):
            values = [row[key] for row in members if row.get(key) is not None]
            if len(values) >= 2:
                summary[key] = {"mean": statistics.mean(values), "std": statistics.stdev(values)}
        summaries.append(summary)
    return summaries


def _changed(row: dict[str, Any]) -> dict[str, Any]:
    """The fields in which a run's config differs from the shipped config of its name (--set),
    the seed and the model's variant (said apart) aside; {} for a config of another name."""
    if row.get("config_name") not in shipped_configs():
        return {}
    shipped = load_config(row["config_name"]).to_dict()
    aside = {"seed", *row.get("variant", {})}
    return {
        key: value
        for key, value in row["config"].items()
        if key not in aside and key in shipped and shipped[key] != value
    }


def _status(row: dict[str, Any]) -> str:
    """Where the run stands, and a stalled start (stall.py) if it was warned about."""
    stall = row["stall"]
    if stall is None:
        return _standing(row)
    recovered = "" if stall["ongoing"] else ", recovered"
    return f"{_standing(row)}; stalled at step {stall['warned_at_step']}{recovered}"


def _standing(row: dict[str, Any]) -> str:
    status = row["status"]
    if status == "stopped":
        if not row["resumable"]:
            return "stopped before its first checkpoint: start it again"
        if row.get("finished_training") is True:
            return "trained, test pending, resumable"
        if row["epochs_completed"] is None or row["window"] is None:  # a run of an older ptblm
            return "stopped, resumable"
        return f"stopped at epoch {row['epochs_completed'] + 1} window {row['window']}, resumable"
    if status == "diverged":
        return f"diverged at step {row['diverged_at_step'] or '?'}"
    if status == "unreadable":
        return (
            f"unreadable: {row['unreadable']}"
            if "unreadable" in row
            else f"{SUMMARY_FILE} unreadable"
        )
    if status == "finished" and row.get("cut_short"):
        epochs = row["epochs_trained"]
        status += ", cut short"
        if epochs is not None:  # 0.0129 of a short smoke run; 54.98 of 55, not "55"
            status += f" at epoch {epochs:.3g}" if epochs < 1 else f" at epoch {epochs:.2f}"
    if status.startswith("finished") and row.get("eval_tokens"):
        status += f", tested on {row['eval_tokens']} tokens"
    return status


def render(rows: list[dict[str, Any]], groups: list[dict[str, Any]], runs_dir: Path) -> str:
    """The table a person reads."""
    if not rows:
        return f"No runs under {runs_dir}. Train one: ptblm train --config small"

    def number(value: float | None, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = ("run", "config", "seed", "prec", "status", "epochs", "best valid", "test",
              "best.pt test", "min", "words/s")  # fmt: skip
    table = [header]
    for row in rows:
        minutes = row.get("wall_seconds")
        table.append(
            (
                row["name"],
                row.get("config_name") or "?",
                str(row["seed"] if row["seed"] is not None else "?"),
                row["precision"] or "?",
                _status(row),
                number(row.get("epochs_trained"), 2),
                number(row.get("best_valid_ppl")),
                number(row.get("test_ppl")),
                number(row.get("best_test_ppl")),
                number(None if minutes is None else minutes / 60, 1),
                number(row.get("train_wps"), 0),
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    right = {2, 5, 6, 7, 8, 9, 10}
    lines = [
        "  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                  enumerate(zip(line, widths, strict=True))).rstrip()
        for line in table
    ]  # fmt: skip
    for group in groups:
        results = ", ".join(
            f"{label} {group[key]['mean']:.2f} +- {group[key]['std']:.2f}"
            for key, label in (
                ("best_valid_ppl", "best valid"),
                ("test_ppl", "test"),
                ("best_test_ppl", "best.pt test"),
            )
            if key in group
        )
        published = group.get("published")
        if not (published and {"config", "valid", "test"} <= published.keys()):
            published = None
        beside = (
            f"; published {published['config']}: valid {published['valid']}, test "
            f"{published['test']}"
            if published
            else ""
        )
        if group["variant"]:
            adds = ", ".join(f"{key}: {value}" for key, value in group["variant"].items())
            beside += f" (these runs' model adds {adds})"
        seeds = ", ".join(map(str, group["seeds"]))
        changed = ", ".join(f"{key} {value}" for key, value in group["changed"].items())
        name = f"{group['config_name']} ({changed})" if changed else group["config_name"]
        lines.append(f"{name} over {len(group['runs'])} runs (seeds {seeds}): {results}{beside}")
    return "\n".join(lines)
