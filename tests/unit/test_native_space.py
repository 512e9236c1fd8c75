"""fallocate, punch_hole, sync_file_range and fadvise, and a full filesystem, both paths."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import native
from engine.errors import DiskFull, IOFailure
from tests.helpers import skip_or_fail

MiB = 1 << 20


def _blocks(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


def test_fallocate_reserves_space_and_sets_size(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        impl.fallocate(fd, 1 << 30, 8 * MiB)
        assert os.fstat(fd).st_size == (1 << 30) + 8 * MiB
        assert 8 * MiB <= _blocks(fd) < 9 * MiB  # only the range, not the gap
        assert os.pread(fd, 16, (1 << 30) + 100) == bytes(16)
    finally:
        os.close(fd)


def test_fallocate_keep_size_within_the_file(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 16 * MiB)  # sparse: no blocks yet
        assert _blocks(fd) == 0
        impl.fallocate(fd, 4 * MiB, 8 * MiB, keep_size=True)
        assert os.fstat(fd).st_size == 16 * MiB
        assert 8 * MiB <= _blocks(fd) < 9 * MiB
    finally:
        os.close(fd)


def test_fallocate_keep_size_beyond_eof(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        impl.fallocate(fd, 0, 8 * MiB, keep_size=True)
        assert os.fstat(fd).st_size == 0
        if impl is native.fallback:
            assert _blocks(fd) == 0  # documented: nothing past EOF is reserved
        else:
            assert _blocks(fd) >= 8 * MiB
    finally:
        os.close(fd)


def test_punch_hole_gives_space_back(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        data = os.urandom(8 * MiB)
        os.write(fd, data)
        os.fsync(fd)
        before = _blocks(fd)
        assert before >= 8 * MiB
        if impl is native.fallback:
            with pytest.raises(IOFailure) as info:
                impl.punch_hole(fd, 2 * MiB, 4 * MiB)
            assert info.value.errno == errno.EOPNOTSUPP
            assert _blocks(fd) == before
            return
        impl.punch_hole(fd, 2 * MiB, 4 * MiB)
        assert os.fstat(fd).st_size == 8 * MiB
        assert before - _blocks(fd) == 4 * MiB
        assert os.pread(fd, 4 * MiB, 2 * MiB) == bytes(4 * MiB)
        assert os.pread(fd, 2 * MiB, 0) == data[: 2 * MiB]
        assert os.pread(fd, 2 * MiB, 6 * MiB) == data[6 * MiB :]
    finally:
        os.close(fd)


def test_sync_file_range_and_fadvise_accept_a_file(impl: ModuleType, tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, os.urandom(1 * MiB))
        impl.sync_file_range(fd, 0, 0)
        impl.sync_file_range(fd, 4096, 8192)
        for advice in native.Advice:
            impl.fadvise(fd, 0, 0, advice)
        assert os.fstat(fd).st_size == 1 * MiB
    finally:
        os.close(fd)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test and unmounted after it."""
    if os.geteuid() != 0:
        skip_or_fail("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_full_filesystem_is_disk_full(impl: ModuleType, tiny_fs: Path, tmp_path: Path) -> None:
    fd = os.open(tiny_fs / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        with pytest.raises(DiskFull) as info:
            impl.fallocate(fd, 0, 4 * MiB)
        assert info.value.errno == errno.ENOSPC
        assert info.value.exit_code == 4
        # A short write never passes silently: ENOSPC after some bytes raises.
        src = tmp_path / "src"
        src.write_bytes(os.urandom(4 * MiB))
        with open(src, "rb") as f:
            with pytest.raises(DiskFull):
                impl.sendfile(fd, f.fileno(), 0, 4 * MiB)
        assert 0 < os.fstat(fd).st_size < 4 * MiB
    finally:
        os.close(fd)
