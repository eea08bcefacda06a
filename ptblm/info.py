"""`ptblm info`: what a bug report needs to know about this installation and machine."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path
from typing import Any

import torch

from ptblm.download import corpus_status
from ptblm.errors import counted
from ptblm.runtime import (
    Threads,
    busy_elsewhere,
    cpu_count,
    cpu_has_native_bf16,
    cpu_name,
    supported_precisions,
)

PACKAGES = ("numpy", "typer", "tensorboard", "pyyaml", "tqdm")
# corpus_status's words that are about the file itself (open_regular's "not a regular file"
# included); another OSError's reason, the same for all three files, is about their folder.
FILE_STATUSES = ("verified", "missing", "wrong sha256", "not a regular file")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def collect(data_dir: Path) -> dict[str, Any]:
    """Versions, the CPU, the GPUs, the precisions each device supports, and the corpus."""
    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            with torch.cuda.device(index):
                precisions = supported_precisions(torch.device("cuda", index))
            gpus.append(
                {
                    "device": f"cuda:{index}",
                    "name": properties.name,
                    "memory_gib": round(properties.total_memory / 2**30, 1),
                    "capability": f"{properties.major}.{properties.minor}",
                    "precisions": precisions,
                }
            )
    folder = Path(data_dir).resolve() / "ptb"
    files = corpus_status(data_dir)
    threads = Threads()  # what `ptblm train` would take now: fixed, or adapted to the load
    return {
        "versions": {
            "python": platform.python_version(),
            "ptblm": package_version("ptblm"),
            # torch's own, with its build (+cpu, +cu124): PyPI's CUDA wheels record none of it
            "torch": str(torch.__version__),
        }
        | {name: package_version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "cpu": {
            "model": cpu_name(),
            "cores": cpu_count(),  # that this process may run on (taskset, cgroups)
            "torch_threads": torch.get_num_threads(),
            "threads": threads.describe(),
            "busy_elsewhere": busy_elsewhere(),
            "native_bf16": cpu_has_native_bf16(),
            "precisions": supported_precisions(torch.device("cpu")),
        },
        "cuda": {
            "available": torch.cuda.is_available(),
            "version": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
            "gpus": gpus,
        },
        "data": {
            "folder": str(folder),
            "files": files,
            "verified": all(status == "verified" for status in files.values()),
        },
    }


def render(info: dict[str, Any]) -> str:
    """The screen a user pastes into a bug report."""
    versions = ", ".join(
        f"{name} {version or 'missing'}" for name, version in info["versions"].items()
    )
    cpu, cuda, data = info["cpu"], info["cuda"], info["data"]
    threads = (
        f"{cpu['threads']} (OMP_NUM_THREADS or --threads)"
        if cpu["threads"] != "auto"
        else f"auto, the cores other work leaves free: {cpu['torch_threads']} now "
        f"({counted(cpu['busy_elsewhere'], 'thread')} of other processes running)"
    )
    bf16 = "yes" if cpu["native_bf16"] else "no (neither AVX-512 BF16 nor AMX: bf16 is refused)"
    lines = [
        f"versions   {versions}",
        f"platform   {info['platform']}",
        f"cpu        {cpu['model']}, {cpu['cores']} cores; threads: {threads}",
        f"           native bf16: {bf16}; precisions: {', '.join(cpu['precisions'])}",
    ]
    if cuda["available"]:
        lines.append(f"cuda       CUDA {cuda['version']}, cuDNN {cuda['cudnn']}")
        for gpu in cuda["gpus"]:
            lines.append(
                f"           {gpu['device']}: {gpu['name']}, {gpu['memory_gib']} GiB, compute "
                f"capability {gpu['capability']}; precisions: {', '.join(gpu['precisions'])}"
            )
    else:
        built = f" (torch built with CUDA {cuda['version']})" if cuda["version"] else ""
        lines.append(f"cuda       no GPU available{built}")
    if data["verified"]:
        state = "the three PTB files, sha256 verified"
    else:
        files = data["files"]
        state = ", ".join(f"{name} {status}" for name, status in files.items())
        statuses = set(files.values())
        if len(statuses) == 1 and statuses.isdisjoint(FILE_STATUSES):
            state += " (--data-dir DIR must be a folder you may read; the files go in DIR/ptb/)"
        else:  # download refuses to replace a file it did not write: it must be removed first
            bad = [name for name, status in files.items() if status not in ("verified", "missing")]
            then = f"remove {' and '.join(bad)}, then " if bad else ""
            fetched = [name for name, status in files.items() if status != "verified"]
            state += f" ({then}ptblm download fetches {'it' if len(fetched) == 1 else 'them'})"
    lines.append(f"data       {data['folder']}: {state}")
    return "\n".join(lines)
