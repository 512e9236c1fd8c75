"""sendfile and argument checking, both paths (file space: test_native_space.py).

The sendfile test moves more than 2 GiB (past both the 2 GiB offset and the
per-call 0x7ffff000 byte limit) from a sparse file with random bytes at
several places, from an odd offset, and compares sha256 digests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

import native
from engine.errors import BadFileDescriptor, BadInput, BrokenByPeer

MiB = 1 << 20
BIG_SIZE = (2 << 30) + 3 * MiB + 123
BIG_OFFSET = 4097  # not page-aligned


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A sparse file over 2 GiB and the sha256 of its bytes from BIG_OFFSET."""
    path = tmp_path_factory.mktemp("big") / "big"
    rnd = os.urandom(64 * 1024)
    with open(path, "wb") as f:
        f.truncate(BIG_SIZE)
        for at in (
            0,
            123_457,
            (1 << 31) - 1000,
            (1 << 31) + 12_345,
            0x7FFFF000 + 77,
            BIG_SIZE - len(rnd),
        ):
            f.seek(at)
            f.write(rnd[: len(rnd) - at % 1000])
    digest = hashlib.sha256()
    buf = bytearray(8 * MiB)
    with open(path, "rb", buffering=0) as f:
        f.seek(BIG_OFFSET)
        while n := f.readinto(buf):
            digest.update(memoryview(buf)[:n])
    yield path, digest.hexdigest()
    path.unlink()


def _drain(sock: socket.socket, result: dict[str, object]) -> None:
    digest = hashlib.sha256()
    buf = bytearray(1 * MiB)
    total = 0
    try:
        while n := sock.recv_into(buf):
            digest.update(memoryview(buf)[:n])
            total += n
    except BaseException as exc:  # reported to the test thread
        result["error"] = exc
    result["sha256"], result["bytes"] = digest.hexdigest(), total


@pytest.mark.slow
def test_sendfile_over_2gib_from_odd_offset(impl: ModuleType, big_file: tuple[Path, str]) -> None:
    path, expected = big_file
    a, b = socket.socketpair()
    result: dict[str, object] = {}
    reader = threading.Thread(target=_drain, args=(b, result))
    with a, b, open(path, "rb") as f:
        reader.start()
        try:
            # Ask for 1000 bytes past EOF: the count falls short only there.
            sent = impl.sendfile(a.fileno(), f.fileno(), BIG_OFFSET, BIG_SIZE - BIG_OFFSET + 1000)
            a.shutdown(socket.SHUT_WR)
        finally:
            reader.join(120)
        assert f.tell() == 0  # the file position of in_fd is left alone
    assert "error" not in result
    assert sent == BIG_SIZE - BIG_OFFSET
    assert result["bytes"] == sent
    assert result["sha256"] == expected


def test_sendfile_stops_at_eof(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "small"
    data = os.urandom(1000)
    path.write_bytes(data)
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        assert impl.sendfile(a.fileno(), f.fileno(), 100, 5000) == 900
        assert impl.sendfile(a.fileno(), f.fileno(), 1000, 10) == 0
        assert impl.sendfile(a.fileno(), f.fileno(), 0, 0) == 0
        a.shutdown(socket.SHUT_WR)
        assert _recv_all(b) == data[100:]


def _recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 * MiB):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sendfile_non_blocking_returns_partial_counts(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(16 * MiB)
    path.write_bytes(data)
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        a.setblocking(False)
        first = impl.sendfile(a.fileno(), f.fileno(), 0, len(data))
        assert 0 < first < len(data)  # the socket buffer filled up
        assert impl.sendfile(a.fileno(), f.fileno(), first, len(data) - first) == 0
        got = bytearray()
        sent = first
        b.setblocking(False)
        while len(got) < len(data):
            try:
                got += b.recv(1 * MiB)
            except BlockingIOError:
                pass
            if sent < len(data):
                sent += impl.sendfile(a.fileno(), f.fileno(), sent, len(data) - sent)
        assert sent == len(data)
        assert got == data


class _Interrupted(Exception):
    pass


def _signal_main_thread_later(
    delay: float, then: Callable[[], None] | None = None
) -> threading.Thread:
    """After ``delay``, deliver SIGUSR1 to the main thread (so its blocked
    syscall is interrupted), then run ``then`` in this helper thread."""

    def run() -> None:
        time.sleep(delay)  # the send has to be blocked before the signal lands
        main = threading.main_thread().ident
        assert main is not None
        signal.pthread_kill(main, signal.SIGUSR1)
        if then is not None:
            then()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.timeout(60)
def test_sendfile_blocked_on_a_slow_peer_lets_a_signal_handler_raise(
    impl: ModuleType, tmp_path: Path
) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(1 * MiB) * 32)

    def handler(signum: int, frame: object) -> None:
        raise _Interrupted

    old = signal.signal(signal.SIGUSR1, handler)
    a, b = socket.socketpair()  # nobody reads b: the send blocks when buffers fill
    try:
        with a, b, open(path, "rb") as f:
            helper = _signal_main_thread_later(0.3)
            try:
                with pytest.raises(_Interrupted):
                    impl.sendfile(a.fileno(), f.fileno(), 0, 32 * MiB)
            finally:
                helper.join()
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.mark.timeout(60)
def test_sendfile_resumes_after_a_signal_handler_returns(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    data = os.urandom(1 * MiB) * 32
    path.write_bytes(data)
    calls: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    a, b = socket.socketpair()
    result: dict[str, object] = {}
    try:
        with a, b, open(path, "rb") as f:
            helper = _signal_main_thread_later(0.3, then=lambda: _drain(b, result))
            try:
                sent = impl.sendfile(a.fileno(), f.fileno(), 0, len(data))
                a.shutdown(socket.SHUT_WR)
            finally:
                helper.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert calls == [signal.SIGUSR1]
    assert sent == len(data)
    assert result["sha256"] == hashlib.sha256(data).hexdigest()


def test_sendfile_to_closed_peer_is_broken_by_peer(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(64 * 1024))
    a, b = socket.socketpair()
    b.close()
    with a, open(path, "rb") as f:
        with pytest.raises(BrokenByPeer):
            impl.sendfile(a.fileno(), f.fileno(), 0, 64 * 1024)


def test_closed_fds_are_bad_file_descriptor(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"x" * 8192)
    a, b = socket.socketpair()
    with a, b, open(path, "rb") as f:
        # Opened after everything else so no other fd reuses the number.
        closed = os.open(path, os.O_RDWR)
        os.close(closed)
        with pytest.raises(BadFileDescriptor):
            impl.sendfile(a.fileno(), closed, 0, 10)
        with pytest.raises(BadFileDescriptor):
            impl.sendfile(closed, f.fileno(), 0, 10)
    closed = os.open(path, os.O_RDWR)
    os.close(closed)
    calls: list[Callable[[], object]] = [
        lambda: impl.fallocate(closed, 0, 10),
        lambda: impl.fallocate(closed, 0, 10, keep_size=True),
        lambda: impl.punch_hole(closed, 0, 10),
        lambda: impl.sync_file_range(closed, 0, 10),
        lambda: impl.fadvise(closed, 0, 10, native.Advice.DONTNEED),
        lambda: impl.sendfile(-1, 0, 0, 10),  # what a closed socket's fileno() says
    ]
    for call in calls:
        with pytest.raises(BadFileDescriptor) as info:
            call()
        assert info.value.errno == errno.EBADF


@pytest.mark.parametrize(
    "offset, length",
    [(-1, 10), (0, -1), (2**63, 1), (2**63 - 10, 11), (1.0, 10), (0, "10"), (True, 10), (0, None)],
)
def test_bad_offsets_and_lengths_are_bad_input(
    impl: ModuleType, tmp_path: Path, offset: object, length: object
) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"")
    with open(path, "r+b") as f:
        fd = f.fileno()
        calls: list[Callable[[], object]] = [
            lambda: impl.sendfile(fd, fd, offset, length),
            lambda: impl.fallocate(fd, offset, length),
            lambda: impl.punch_hole(fd, offset, length),
            lambda: impl.sync_file_range(fd, offset, length),
            lambda: impl.fadvise(fd, offset, length, native.Advice.NORMAL),
        ]
        for call in calls:
            with pytest.raises(BadInput):
                call()
        assert os.fstat(fd).st_size == 0


def test_other_bad_arguments_are_bad_input(impl: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"abc")
    r, w = os.pipe()
    try:
        with open(path, "r+b") as f:
            fd = f.fileno()
            with pytest.raises(BadInput):
                impl.fallocate(fd, 0, 0)  # nothing to reserve: the kernel says EINVAL
            with pytest.raises(BadInput):
                impl.fadvise(fd, 0, 0, 99)
            with pytest.raises(BadInput):
                impl.sendfile(str(fd), fd, 0, 1)
            with pytest.raises(BadInput):  # ESPIPE: a pipe has no pages to advise
                impl.fadvise(r, 0, 0, native.Advice.DONTNEED)
            with pytest.raises(BadInput):
                impl.sync_file_range(w, 0, 0)
            assert path.read_bytes() == b"abc"
    finally:
        os.close(r)
        os.close(w)
