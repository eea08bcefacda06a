import pytest
import torch
from helpers import cpu_has_native_bf16_by_its_flags

from ptblm.errors import ConfigError
from ptblm.runtime import (
    check_precision,
    cpu_has_native_bf16,
    cpu_info,
    resolve_device,
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


def test_native_bf16_is_what_the_cpu_flags_say():
    assert cpu_has_native_bf16() == cpu_has_native_bf16_by_its_flags()


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


def test_devices():
    assert resolve_device("cpu") == CPU
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


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


def test_busy_elsewhere_sees_another_process_computing():
    import subprocess
    import sys
    import time

    from ptblm.runtime import busy_elsewhere

    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        deadline = time.monotonic() + 30
        while busy_elsewhere() < 1:
            assert time.monotonic() < deadline, "a spinning process was never seen running"
    finally:
        spinner.kill()
        spinner.wait()
