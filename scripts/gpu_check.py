"""The GPU checks of ptblm in one go, top to bottom, on a CUDA machine:

    PYTHONPATH=$PWD python3 scripts/gpu_check.py OUT --data-dir DIR --runs medium large

1. the environment (torch, CUDA, cuDNN, the GPU) -> OUT/env.txt
2. the graphed step against the eager one (a quick `pytest -m cuda -k graphed_step_equals`): if it fails,
   the full runs train with the eager step (--set cuda_graph=false)
3. the benchmark (scripts/bench.py on cuda: ptblm's loop and a bare eager cuDNN loop of the same
   shapes in one process; graphed, then eager) -> OUT/bench.txt; with --probe, instead of the
   eager bench: scripts/gpu_probe.py (kernel time by kind, what bf16 means for cuDNN's LSTM) and
   the bench in bf16/fp16 and with TF32 -> OUT/probe.txt, OUT/bench_amp.txt, OUT/bench_tf32.txt
4. the full runs named by --runs, started side by side (each its own process on the one GPU,
   fp32, TF32 off, seed 0 or each of --seeds) -> OUT/<run>.log
5. the whole `pytest -m cuda` while they train -> OUT/tests.txt
6. waits for the runs, copying each run's metrics.json, summary.json, config.yaml and TensorBoard
   events (train/grad_norm among them) to OUT/results/<config>-seed<N>-cuda/ every minute, so
   that a lease which ends first still keeps them, and prints a short table last.

With --runs-only, steps 2, 3 and 5 are left out and the runs start at once: a full large run
trains for about 13 minutes at the 66k words/s measured on an H200, so it needs a lease of its
own (`--runs large --runs-only`, started under setsid; the graphed step was checked equal to the
eager one on the H200 in earlier sessions).

How the start of large varies with the seed (docs/results.md: 4 of 12 seeds stall), one epoch
of several seeds side by side: eight took 158 s on the H200; --eager runs them with the eager
step instead (names end in -eager):

    PYTHONPATH=$PWD python3 scripts/gpu_check.py /tmp/large --data-dir DIR --runs large \
        --seeds 4 5 6 7 8 9 10 11 --max-steps 1327 --eval-tokens 20000 --runs-only \
        --archive $OUT/large.tar.gz

A lease brings back 8 files at most: --archive FILE (outside OUT) keeps all of OUT as one
.tar.gz, rewritten every minute and at the end.

OUT/DONE is written at the very end. DIR must hold ptb/ with the three PTB files (verified like
a download). Try it on the CPU with tiny sizes first:

    python scripts/gpu_check.py /tmp/check --data-dir data --device cpu --runs test \
        --bench-configs small --bench-windows 5 --max-steps 50
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sh(command: list[str], log: Path, timeout: float | None = None) -> int:
    """Run a command, its output into `log` (and echoed); returns the exit code."""
    print(f"$ {' '.join(command)}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    print(log.read_text()[-3000:], flush=True)
    print(f"[exit {code}, {time.perf_counter() - started:.0f} s]", flush=True)
    return code


def environment(out: Path, device: str) -> None:
    import torch

    lines = [
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, python {sys.version.split()[0]}"
    ]
    if device != "cpu" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
        )
    try:
        smi = ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
               "--format=csv,noheader"]  # fmt: skip
        lines.append(subprocess.run(smi, capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    text = "\n".join(lines)
    (out / "env.txt").write_text(text + "\n")
    print(text, flush=True)


def checks(args, out: Path, pytest: list[str]) -> bool:
    """The graph check and the benchmark, before the runs; returns whether the runs may use the
    graphed step."""
    graph = True
    if args.device != "cpu":
        code = sh([*pytest, "-m", "cuda", "-k", "graphed_step_equals", "tests/test_cuda.py"],
                  out / "graph_check.txt", timeout=180)  # fmt: skip
        graph = code == 0
        print(f"graphed step {'equals' if graph else 'DOES NOT equal'} the eager step", flush=True)
    bench = [sys.executable, "scripts/bench.py", "--device", args.device, "--precisions", "fp32",
             "--configs", *args.bench_configs, "--rounds", "2"]  # fmt: skip
    sh([*bench, "--windows", str(args.bench_windows)], out / "bench.txt", timeout=300)
    if args.probe:
        sh([sys.executable, "scripts/gpu_probe.py", "--device", args.device, "--config",
            *args.bench_configs], out / "probe.txt", timeout=180)  # fmt: skip
        windows = ["--windows", str(args.bench_windows)]
        sh([*bench, *windows, "--precisions", "bf16", "fp16"], out / "bench_amp.txt", timeout=300)
        sh([*bench, *windows, "--set", "allow_tf32=true"], out / "bench_tf32.txt", timeout=300)
    elif args.device != "cpu":
        sh([*bench, "--windows", str(max(args.bench_windows // 2, 1)), "--set", "cuda_graph=false"],
           out / "bench_eager.txt", timeout=300)  # fmt: skip
    return graph


def start_run(name: str, seed: int, args, out: Path, graph: bool) -> tuple[str, subprocess.Popen]:
    eager = args.eager or not graph
    run_name = f"{name}-seed{seed}-{args.device.split(':')[0]}" + ("-eager" if eager else "")
    command = [
        sys.executable, "-m", "ptblm", "train", "--config", name, "--device", args.device,
        "--data-dir", str(args.data_dir), "--runs-dir", str(args.runs_dir), "--name", run_name,
        "--seed", str(seed), "--checkpoint-every", "0",
    ]  # fmt: skip
    if eager:
        command += ["--set", "cuda_graph=false"]
    if args.max_steps:
        command += ["--max-steps", str(args.max_steps)]
    if args.eval_tokens:
        command += ["--eval-tokens", str(args.eval_tokens)]
    print(f"$ {' '.join(command)} &", flush=True)
    log = (out / f"{run_name}.log").open("w")
    return run_name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def collect(run_name: str, args, out: Path) -> dict:
    source = args.runs_dir / run_name
    target = out / "results" / run_name
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*"):
        if (
            path.name in ("metrics.json", "summary.json", "config.yaml")
            or ".tfevents." in path.name
        ):
            shutil.copy2(path, target / path.name)
    try:
        return json.loads((target / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}


def archive(out: Path, path: Path | None) -> None:
    """All of OUT but checkpoints (and run directories kept in it) as one .tar.gz at `path`,
    replaced whole: a lease may end while it is written. A failure is said, not raised: the
    runs go on."""
    if path is None:
        return

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        skip = info.name.endswith((".pt", ".tmp", ".partial")) or parts[1:2] == ("runs",)
        return None if skip else info

    partial = path.with_name(path.name + ".partial")
    try:
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(out, arcname=out.name, filter=keep)
        os.replace(partial, path)
    except OSError as error:
        print(f"archive {path}: {error}", flush=True)
        partial.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--runs", nargs="*", default=["medium", "large"])
    parser.add_argument(
        "--runs-dir", type=Path,
        help="default: /dev/shm/ptblm-runs-TIMESTAMP (a new one each time), else OUT/runs",
    )  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each")
    parser.add_argument("--max-steps", type=int, help="cut each run short (a dry run)")
    parser.add_argument("--eval-tokens", type=int, help="validate and test on fewer tokens")
    parser.add_argument("--eager", action="store_true", help="runs with the eager step")
    parser.add_argument("--archive", type=Path, help="OUT as one .tar.gz here (outside OUT)")
    parser.add_argument("--bench-configs", nargs="*", default=["small", "medium", "large"])
    parser.add_argument("--bench-windows", type=int, default=200)
    parser.add_argument("--tests-timeout", type=float, default=300)
    parser.add_argument(
        "--probe", action="store_true",
        help="also profile the bench configs' step, show what bf16 means for cuDNN's LSTM, and "
        "bench them in bf16, fp16 and TF32 (instead of the eager bench)",
    )  # fmt: skip
    parser.add_argument(
        "--runs-only", action="store_true",
        help="start the runs at once: no graph check, no benchmark, no cuda tests beside them",
    )  # fmt: skip
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.runs_dir is None:
        shm = Path("/dev/shm")
        fast = shm.is_dir() and shutil.disk_usage(shm).free > 4 * 2**30
        # A run directory left by an earlier check would refuse the run's name: a new folder.
        fresh = f"ptblm-runs-{time.strftime('%Y%m%d-%H%M%S')}"
        args.runs_dir = shm / fresh if fast else out / "runs"
    args.runs_dir = args.runs_dir.resolve()
    args.data_dir = args.data_dir.resolve()
    if args.archive is not None:
        args.archive = args.archive.resolve()
        if args.archive.is_relative_to(out):
            parser.error("--archive must be outside OUT")
        if not args.archive.parent.is_dir():
            parser.error(f"--archive: no folder {args.archive.parent}")
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    os.environ.update(env)
    pytest = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider"]

    environment(out, args.device)
    graph = args.runs_only or checks(args, out, pytest)
    seeds = dict.fromkeys(args.seeds)  # a seed given twice would reuse its run's name
    runs = [start_run(name, seed, args, out, graph) for name in args.runs for seed in seeds]
    if args.device != "cpu" and not args.runs_only:
        sh([*pytest, "-m", "cuda", "tests/test_cuda.py"], out / "tests.txt", args.tests_timeout)
    results, collected = {}, time.perf_counter()
    for run_name, process in runs:
        while process.poll() is None:
            time.sleep(5)
            print(f"[{time.perf_counter() - started:.0f} s] {run_name}: "
                  f"{tail(out / f'{run_name}.log')}", flush=True)  # fmt: skip
            if time.perf_counter() - collected >= 60:  # a lease may end before the runs
                collected = time.perf_counter()
                for name, _ in runs:
                    collect(name, args, out)
                archive(out, args.archive)
        results[run_name] = (process.returncode, collect(run_name, args, out))

    print(f"\n{'run':28} {'exit':>4} {'valid':>8} {'test':>8} {'best.pt':>8} {'minutes':>8} "
          f"{'words/s':>8}  valid after epochs 1, 2, 3")  # fmt: skip
    for run_name, (code, m) in results.items():
        early = ", ".join(f"{e['valid_ppl']:.2f}" for e in m.get("history", [])[:3])
        print(f"{run_name:28} {code:4} {fmt(m.get('valid_ppl'))} {fmt(m.get('test_ppl'))} "
              f"{fmt(m.get('best_test_ppl'))} {fmt(m.get('wall_seconds', 0) / 60)} "
              f"{fmt(m.get('train_wps'), 0)}  {early}")  # fmt: skip
    print(f"total {time.perf_counter() - started:.0f} s")
    (out / "DONE").write_text("done\n")
    archive(out, args.archive)


def tail(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][-150:] if lines else ""


def fmt(value, digits: int = 2) -> str:
    return f"{value:8.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>8}"


if __name__ == "__main__":
    main()
