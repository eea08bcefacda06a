import random

import numpy as np
import pytest
import torch
from helpers import cpu_has_native_bf16_by_its_flags

import ptblm.runtime as runtime
from ptblm.errors import ConfigError
from ptblm.runtime import (
    check_precision,
    cpu_info,
    resolve_device,
    rng_state,
    set_rng_state,
    supported_precisions,
)

CPU = torch.device("cpu")

ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
model name\t: AMD EPYC 7B13
"""


def test_cpu_info_reads_the_first_processor(tmp_path):
    (tmp_path / "cpuinfo").write_text(ZEN3)
    info = cpu_info(tmp_path / "cpuinfo")
    assert info["model name"] == "AMD EPYC 7B13"
    assert info["flags"].split() == ["fpu", "sse2", "avx", "avx2", "fma"]
    assert cpu_info(tmp_path / "missing") == {}


def cpuinfo_with_flags(flags: str | None) -> str:
    """A two-processor /proc/cpuinfo; only the first processor's flags count."""
    first = "processor\t: 0\nmodel name\t: Some CPU\n"
    if flags is not None:
        first += f"flags\t\t: {flags}\n"
    return first + "\nprocessor\t: 1\nflags\t\t: fpu avx512_bf16 amx_bf16\n"


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu sse2 avx avx2 fma", False),  # Zen 3, Skylake: no bf16 arithmetic
        ("fpu avx2 avx512f avx512_bf16 avx512_vnni", True),  # Zen 4, Cooper Lake
        ("fpu avx2 avx512f amx_tile amx_bf16 amx_int8", True),  # Sapphire Rapids
        ("fpu avx512f avx512_fp16 amx_tile", False),  # neither bf16 flag
        ("fpu xavx512_bf16 amx_bf16x", False),  # whole flags only, not substrings
    ],
)
def test_native_bf16_is_read_from_the_first_processors_flags(tmp_path, monkeypatch, flags, native):
    (tmp_path / "cpuinfo").write_text(cpuinfo_with_flags(flags))
    real = runtime.cpu_info
    monkeypatch.setattr(runtime, "cpu_info", lambda: real(tmp_path / "cpuinfo"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: not native)
    runtime.cpu_has_native_bf16.cache_clear()
    try:
        assert runtime.cpu_has_native_bf16() is native
        assert runtime.supported_precisions(CPU) == (["fp32", "bf16"] if native else ["fp32"])
    finally:
        runtime.cpu_has_native_bf16.cache_clear()


@pytest.mark.parametrize("onednn", [True, False])
def test_without_cpu_flags_onednn_decides(tmp_path, monkeypatch, onednn):
    """ARM or macOS: no flags line (or no /proc/cpuinfo at all); oneDNN's own answer counts."""
    (tmp_path / "cpuinfo").write_text(cpuinfo_with_flags(None))
    real = runtime.cpu_info
    monkeypatch.setattr(runtime, "cpu_info", lambda: real(tmp_path / "cpuinfo"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    runtime.cpu_has_native_bf16.cache_clear()
    try:
        assert runtime.cpu_has_native_bf16() is onednn
    finally:
        runtime.cpu_has_native_bf16.cache_clear()


def test_precisions_on_this_cpu():
    if cpu_has_native_bf16_by_its_flags():
        assert supported_precisions(CPU) == ["fp32", "bf16"]
        check_precision("bf16", CPU)  # accepted
    else:
        assert supported_precisions(CPU) == ["fp32"]
        with pytest.raises(ConfigError) as raised:
            check_precision("bf16", CPU)
        assert "no native bf16" in str(raised.value) and "--precision fp32" in str(raised.value)
        assert len(str(raised.value).splitlines()) == 1
    check_precision("fp32", CPU)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        check_precision("fp16", CPU)


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu:0", "CPU"])
def test_unknown_devices_are_refused(name):
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device(name)


def test_devices_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == CPU and resolve_device("auto") == CPU
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"--device {name}: CUDA is not available"):
            resolve_device(name)


def test_devices_on_a_machine_with_two_gpus(monkeypatch):
    """On every machine, GPU or not: torch.device("cuda:1") is a name, not an allocation."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="has 2 CUDA device.*cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    for name in ("cuda:", "cuda:x", "cuda:-1"):
        with pytest.raises(ConfigError, match=f"--device {name}: unknown device"):
            resolve_device(name)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_take_the_cores_other_work_leaves_free(monkeypatch, torch_threads):
    import ptblm.runtime as runtime

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_count", lambda: 4)
    busy = [0]
    monkeypatch.setattr(runtime, "busy_elsewhere", lambda: busy[0])
    threads = runtime.Threads()
    assert torch.get_num_threads() == 4 and threads.describe() == "auto"  # alone: all of them
    for others, expected in ((1, 3), (3, 1), (9, 1), (0, 4)):
        busy[0] = others
        threads.adjust()
        assert torch.get_num_threads() == expected
    fixed = runtime.Threads(2)
    busy[0] = 0
    fixed.adjust()
    assert torch.get_num_threads() == 2 and fixed.describe() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert not runtime.Threads().adaptive  # the user's OMP_NUM_THREADS is theirs
    runtime.Threads(4)  # every core: taken
    # 100,000 threads segfaulted, 20,000 failed to start: more than the cores is refused.
    with pytest.raises(ConfigError, match="--threads 5: this process may run on 4 cores; use 1"):
        runtime.Threads(5)


def test_busy_elsewhere_counts_the_running_threads_of_other_processes(tmp_path):
    import os

    from ptblm.runtime import busy_elsewhere

    def thread(pid: int, tid: int, name: str, state: str) -> None:
        task = tmp_path / str(pid) / "task" / str(tid)
        task.mkdir(parents=True)
        # /proc/PID/task/TID/stat: "tid (comm) state ppid ..."; comm may hold ") S (".
        (task / "stat").write_text(f"{tid} ({name}) {state} 1 1 1 0 -1\n")

    own = os.getpid()
    thread(own, own, "python", "R")  # this process: never counted
    thread(own, own + 1, "python", "R")
    thread(101, 101, "spin", "R")
    thread(101, 102, "spin", "R")
    thread(202, 202, "idle", "S")
    thread(303, 303, "odd) S (name", "R")  # the state follows the last ")"
    thread(404, 404, "disk", "D")
    (tmp_path / "self").mkdir()  # not a number: not a process
    assert busy_elsewhere(str(tmp_path)) == 3
    assert busy_elsewhere(str(tmp_path / "missing")) == 0


def test_rng_state_round_trip_replays_every_generator():
    set_rng_state(rng_state())  # also proves the state is accepted as saved
    saved = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(saved)
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]
