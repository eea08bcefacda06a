"""What the run computes on: the device, the precision and what this machine supports, TF32, the
malloc setting and the seeds."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import glob
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptblm.errors import ConfigError, counted

# x86 flags of a CPU that computes in bf16 natively (AVX-512 BF16: AMD Zen 4 and newer, Intel
# Cooper Lake and Sapphire Rapids; AMX: Intel Sapphire Rapids and newer). Without them oneDNN
# emulates bf16 or cannot run the LSTM at all, and bf16 is ~100x slower than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when present), cpu, cuda or cuda:N; anything else is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, colon, index = name.partition(":")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise ConfigError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here. Use --device cpu or auto.")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {name}: this machine has {counted(torch.cuda.device_count(), 'CUDA device')}, "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
        )
    return torch.device(name)


def cpu_info(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none, e.g. macOS)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_name() -> str:
    return cpu_info().get("model name") or platform.processor() or platform.machine()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bf16 natively? From the CPU's flags on Linux x86; elsewhere (ARM,
    macOS) oneDNN's own answer."""
    flags = cpu_info().get("flags")
    if flags is not None:
        return any(flag in flags.split() for flag in NATIVE_BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def supported_precisions(device: torch.device) -> list[str]:
    """The precisions `ptblm train` accepts on this device."""
    if device.type == "cuda":
        return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision this device cannot compute fast, instead of falling back silently."""
    if device.type == "cpu" and precision == "fp16":
        also = " (or bf16: this CPU has it natively)" if cpu_has_native_bf16() else ""
        raise ConfigError(f"precision fp16 needs a CUDA device; on the CPU use fp32{also}.")
    if device.type == "cpu" and precision == "bf16" and not cpu_has_native_bf16():
        raise ConfigError(
            f"this CPU ({cpu_name()}) has no native bf16 (neither AVX-512 BF16 nor AMX), so bf16 "
            f"would be far slower than fp32 here: use --precision fp32."
        )
    if device.type == "cuda" and precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"{torch.cuda.get_device_name(device)} has no native bf16: use --precision fp16 or fp32."
        )


def autocast_context(precision: str, device: torch.device):
    """fp32: nothing. bf16/fp16: autocast for the model (the loss is computed in fp32 anyway).

    On CUDA, autocast runs cuDNN LSTMs in fp16 whatever dtype is asked for, so both bf16 and
    fp16 there use a GradScaler (see make_scaler).
    """
    check_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    if device.type == "cuda" and precision != "fp32":
        return torch.amp.GradScaler("cuda")
    return None


def configure_tf32(allow_tf32: bool) -> None:
    """TF32 matrix products on CUDA (Ampere and newer) for training and evaluation alike.

    PyTorch lets cuDNN use TF32 by default; the faithful setting is off for both, so that
    `ptblm eval` computes exactly what the trainer did.
    """
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed large blocks instead of returning them to the OS.

    Every window allocates the same few large tensors (small: 16 MB of logits and their
    gradients) and frees them again. By default glibc serves blocks above 128 KB with mmap and
    unmaps them on free, so each window page-faults its buffers back in and zero-fills them;
    on the 2-core CPU this was a fifth of a bf16 window. Raising the mmap and trim thresholds
    to 1 GiB keeps them in the heap (the process keeps its peak memory). Changes no number;
    a no-op where the C library is not glibc. Called by `ptblm train` and the benchmark, not
    on import.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, 1 << 30)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every random generator a run uses, as tensors and plain data (weights_only-loadable)."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            numpy_state[0],
            torch.from_numpy(numpy_state[1].astype(np.int64)),
            *numpy_state[2:],
        ],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.machine()}, {counted(torch.get_num_threads(), 'thread')}"


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def busy_elsewhere(proc: str = "/proc") -> int:
    """Threads of other processes running on a core right now (Linux /proc; 0 elsewhere)."""
    own, busy = os.getpid(), 0
    for stat in glob.glob(f"{glob.escape(proc)}/[0-9]*/task/[0-9]*/stat"):
        if int(stat.split("/")[-4]) == own:  # .../PID/task/TID/stat
            continue
        try:
            with open(stat) as file:
                text = file.read()
        except OSError:  # the thread ended meanwhile
            continue
        busy += text[text.rfind(")") + 2 : text.rfind(")") + 3] == "R"
    return busy


class Threads:
    """How many threads torch computes with on the CPU.

    `--threads N` (or OMP_NUM_THREADS) fixes it. Otherwise ptblm takes the cores that other work
    leaves free, at least one, at the start and again at every `adjust()` (each log interval):
    alone, all of them, as torch would; beside another busy process, fewer. torch's OpenMP
    threads spin while they wait for one another, so two processes that both take every core
    run at a third of their speed each instead of about two thirds.
    """

    def __init__(self, requested: int | None = None):
        self.adaptive = requested is None and "OMP_NUM_THREADS" not in os.environ
        if requested is not None and requested > (cores := cpu_count()):
            # More threads than cores only wait on one another (and by the thousand, crash).
            raise ConfigError(
                f"--threads {requested}: this process may run on {counted(cores, 'core')}; use "
                f"1 to {cores}."
            )
        if requested is not None:
            torch.set_num_threads(requested)
        self.adjust()

    def adjust(self) -> None:
        if self.adaptive:
            wanted = max(1, cpu_count() - busy_elsewhere())
            if wanted != torch.get_num_threads():
                torch.set_num_threads(wanted)

    def describe(self) -> str | int:
        """For metrics.json: N when fixed, else "auto"."""
        return torch.get_num_threads() if not self.adaptive else "auto"
