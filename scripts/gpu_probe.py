"""Where a GPU training window spends its time, and what bf16 means there (run by gpu_check.py):

    PYTHONPATH=$PWD python3 scripts/gpu_probe.py --device cuda --config large

1. For nn.LSTM under fp32, autocast fp16 and autocast bf16: the LSTM output's dtype and the
   kernels that ran (names carry the math type: cuDNN runs bf16 natively when the output is
   bf16 and the kernels say bf16; otherwise autocast computed it in another type).
2. For one config's eager step (fp32, TF32 off): the CUDA kernels of 10 windows by total time,
   grouped into matrix products, the recurrence, elementwise work and the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import ptblm_words_per_second, synchronize, zipf_ids  # noqa: E402

from ptblm.config import load_config  # noqa: E402
from ptblm.runtime import configure_tf32  # noqa: E402


def top_kernels(prof, count: int) -> list[tuple[str, float, int]]:
    """(name, total ms, calls) of the `count` costliest CUDA kernels (CPU ops on a CPU)."""
    rows = [
        (event.key, (event.device_time_total or event.self_cpu_time_total) / 1e3, event.count)
        for event in prof.key_averages()
        if event.device_time_total > 0 or not torch.cuda.is_available()
    ]
    return sorted(rows, key=lambda row: -row[1])[:count]


def activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CUDA if device.type == "cuda" else ProfilerActivity.CPU]


def lstm_precisions(device: torch.device, hidden_size: int) -> None:
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}")
    configure_tf32(False)  # the fp32 line in true fp32 (cuDNN's own default allows TF32)
    lstm = nn.LSTM(hidden_size, hidden_size, 2).to(device)
    x = torch.randn(35, 20, hidden_size, device=device)
    for label, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        try:
            for _ in range(2):  # the first pass picks algorithms
                with profile(activities=activities(device)) as prof, autocast:
                    output, _ = lstm(x)
                    output.float().sum().backward()
                synchronize(device)
        except RuntimeError as error:
            print(f"\nnn.LSTM under {label}: refused ({str(error).splitlines()[0][:120]})")
            continue
        print(f"\nnn.LSTM 2x{hidden_size} under {label}: output {output.dtype}")
        for name, ms, calls in top_kernels(prof, 6):
            print(f"  {ms:8.2f} ms {calls:5}x  {name[:110]}")


def group(name: str) -> str:
    lowered = name.lower()
    if "rnn" in lowered or "lstm" in lowered or "persist" in lowered:
        return "recurrence (cuDNN RNN kernels)"
    if "gemm" in lowered or "xmma" in lowered or "cutlass" in lowered or "sgemm" in lowered:
        return "matrix products"
    if "elementwise" in lowered or "vectorized" in lowered or "reduce" in lowered:
        return "elementwise and reductions"
    return "other"


def step_profile(name: str, device: torch.device, overrides: list[str]) -> None:
    config = load_config(name, ["cuda_graph=false", *overrides])
    configure_tf32(config.allow_tf32)
    windows = 10
    ids = zipf_ids(config.vocab_size, config.batch_size * ((windows + 1) * config.num_steps + 1))
    ptblm_words_per_second(config, ids, 3, device)  # warm up
    with profile(activities=activities(device)) as prof:
        ptblm_words_per_second(config, ids, windows, device)
    kernels = top_kernels(prof, 1000)
    total = sum(ms for _, ms, _ in kernels)
    print(f"\n{name}, eager fp32: {total / windows:.2f} ms of kernels a window")
    groups: dict[str, float] = {}
    for kernel, ms, _ in kernels:
        groups[group(kernel)] = groups.get(group(kernel), 0.0) + ms
    for label, ms in sorted(groups.items(), key=lambda item: -item[1]):
        print(f"  {ms / windows:7.2f} ms a window  {100 * ms / total:5.1f}%  {label}")
    for kernel, ms, calls in kernels[:15]:
        print(f"  {ms / windows:7.3f} ms {calls // windows:5}x a window  {kernel[:100]}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--config", nargs="+", default=["large"])
    parser.add_argument("--hidden-size", type=int, default=1500, help="of the nn.LSTM probe")
    parser.add_argument("--set", action="append", default=[], help="config overrides (tiny tries)")
    args = parser.parse_args()
    device = torch.device(args.device)
    lstm_precisions(device, args.hidden_size)
    for name in args.config:
        step_profile(name, device, args.set)


if __name__ == "__main__":
    main()
