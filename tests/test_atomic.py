import os
import stat

import pytest

from ptblm.atomic import atomic_write, remove_stale_temp_files


def test_atomic_write_never_exposes_a_partial_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    def crash(file):
        file.write(b"new but incomplete")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_write_gives_the_umask_permissions_not_mkstemps_0600(tmp_path):
    atomic_write(tmp_path / "config.yaml", lambda file: file.write(b"a: 1\n"))
    assert stat.S_IMODE((tmp_path / "config.yaml").stat().st_mode) == 0o666 & ~umask()
    assert (tmp_path / "config.yaml").read_bytes() == b"a: 1\n"


def test_stale_temp_files_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_bytes(b"a user's file, not hidden")
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "notes.tmp"]


def open_descriptors_under(folder) -> list[str]:
    """This process's open files in `folder` (not a count of them all: another test's file that
    the garbage collector closes meanwhile must not count)."""
    paths = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
    return [path for path in paths if path.startswith(str(os.path.realpath(folder)))]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads /proc/self/fd (Linux)")
def test_a_file_system_that_refuses_chmod_leaves_no_temp_file_and_no_open_descriptor(
    tmp_path, monkeypatch
):
    """Some mounts (CIFS, NTFS) refuse chmod: the write fails whole, as any failure does."""

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(PermissionError):
        atomic_write(tmp_path / "last.pt", lambda file: file.write(b"x"))
    assert open_descriptors_under(tmp_path) == [] and list(tmp_path.iterdir()) == []
