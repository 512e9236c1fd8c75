"""FileSink with its threads: writes, hash and output copies leave the event
loop, in order, and a sink out of buffers makes the reader pause."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from engine.download.local import verify_streamed
from engine.download.output import OutputFile
from engine.download.response import PieceResponse
from engine.download.sinks import BouncePool, FileSink, _write, default_disk_threads
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import TaskId
from tests.helpers import run

PIECE = 64 << 10
FIRST, BODY = os.urandom(PIECE), os.urandom(PIECE)  # piece 0 is held, piece 1 arrives
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % PIECE


async def _receive(response: PieceResponse, wire: bytes, step: int) -> int:
    """Deliver ``wire`` ``step`` bytes at a time, pausing as the transport
    does while the sink is starved. Returns how many pauses there were."""
    pauses, used = 0, 0
    while used < len(wire) and not response.done:
        if response.starved:
            pauses += 1
            room = asyncio.get_running_loop().create_future()
            response.on_room(partial(_set, room))
            await room
        with response.get_buffer() as buf:
            n = min(len(buf), step, len(wire) - used)
            buf[:n] = wire[used:used + n]
        response.received(n)
        used += n
    return pauses


class _Counted(ThreadPoolExecutor):
    """One thread that counts the jobs handed to it."""

    def __init__(self) -> None:
        super().__init__(1)
        self.jobs = 0

    def submit(self, fn, /, *args, **kwargs):
        self.jobs += 1
        return super().submit(fn, *args, **kwargs)


@pytest.mark.parametrize("threads", [3, 1])
def test_threaded_sink_writes_hashes_and_exports_in_order(tmp_path, threads):
    """``threads`` 3: disk, hash and export threads; 1: the disk thread is
    also the hasher and the exporter, and each buffer is one job on it."""
    store = PieceStore(str(tmp_path / "store"))
    layout = PieceLayout(2 * PIECE, PIECE)
    task = store.create(TaskMeta.new(TaskId.of("sink-test"), "http://o/f", layout))
    task.write_piece(0, FIRST)
    task.commit_piece(0, hashlib.sha256(FIRST).hexdigest())
    output = OutputFile(str(tmp_path / "out"))
    disk = _Counted()
    hasher, exporter = (_Counted(), _Counted()) if threads == 3 else (disk, disk)
    near: list[int] = []

    async def main():
        sink = FileSink(task.fd, PIECE, PIECE, 4096, writer=disk, hasher=hasher,
                        exporter=exporter, pool=BouncePool(4096), depth=1, outputs=(output,),
                        near=(PIECE // 2, lambda: near.append(1)))
        response = PieceResponse(sink)
        pauses = await _receive(response, HEAD + BODY, 3000)
        assert response.ok
        response.release()
        loop = asyncio.get_running_loop()
        actual = None       # one thread: its write jobs hashed, verify reads the digest
        if threads == 3:
            actual = await loop.run_in_executor(hasher, sink.sha256)  # after every hash
        # Queued after every write; marks the piece in the output after its writes.
        await loop.run_in_executor(disk, verify_streamed, task, 1, sha(BODY), sink, actual)
        await loop.run_in_executor(exporter, lambda: None)
        return pauses

    try:
        pauses = run(main())
        assert pauses > 0, "one buffer out at a time: the reader must have waited"
        assert near == [1]
        buffers = PIECE // 4096
        if threads == 1:
            assert disk.jobs == buffers + 2   # a job per buffer, the verify, the drain
        else:
            assert (disk.jobs, hasher.jobs, exporter.jobs) == (buffers + 1, buffers + 1,
                                                              buffers + 2)
        assert task.has(1) and os.pread(task.fd, PIECE, PIECE) == BODY
        assert output.streamed == PIECE  # piece 1 only: piece 0 is copied at the end
        task.finish(sha(FIRST + BODY))
        # Piece 1 was marked exported: finish must not copy it again (if it
        # did, these zeros would show in the output).
        os.pwrite(task.fd, bytes(PIECE), PIECE)
        output.finish(task)
        assert (tmp_path / "out").read_bytes() == FIRST + BODY
    finally:
        for pool in {disk, hasher, exporter}:
            pool.shutdown()
        task.close()


@pytest.mark.parametrize("cores,threads", [(1, 1), (2, 1), (3, 3), (64, 3)])
def test_separate_hash_and_export_threads_only_with_cores_to_spare(monkeypatch, cores, threads):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_disk_threads() == threads


def _set(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store_one_piece(tmp_path, length: int):
    store = PieceStore(str(tmp_path / "store"))
    return store.create(TaskMeta.new(TaskId.of(f"direct-{length}"), "http://o/f",
                                      PieceLayout(length, PIECE)))


def test_aligned_buffers_go_to_the_device_and_the_tail_is_buffered(tmp_path):
    """A piece whose length is not a multiple of the block size: its aligned
    buffers are written through the O_DIRECT descriptor, its tail through the
    ordinary one, and every byte lands where it belongs."""
    length = PIECE - 100
    body = os.urandom(length)
    task = _store_one_piece(tmp_path, length)
    direct = task.direct_fd
    assert direct >= 0, "ext4 and tmpfs on this kernel take O_DIRECT"
    try:
        async def main():
            sink = FileSink(task.fd, 0, length, 4096, direct=direct, pool=BouncePool(4096))
            response = PieceResponse(sink)
            await _receive(response, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length
                           + body, 5000)
            assert response.ok
            response.release()
            return sink

        sink = run(main())
        assert sink.error is None
        assert sink.direct == direct, "aligned buffers must not have fallen back"
        resident = _resident_pages(task.fd, length)
        assert not any(resident[:-1]), "aligned buffers went through the page cache"
        assert resident[-1], "the buffered tail should be in the page cache"
        assert os.pread(task.fd, length, 0) == body
        assert sink.sha256() == sha(body)
    finally:
        task.close()


def _resident_pages(fd: int, length: int) -> list[bool]:
    """mincore(2) over a fresh mapping of the file: which pages are cached."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
    pages = -(-length // mmap.PAGESIZE)
    vec = ctypes.create_string_buffer(pages)
    mapping = mmap.mmap(fd, length)  # nothing is touched: mincore only looks
    try:
        anchor = ctypes.c_char.from_buffer(mapping)
        rc = libc.mincore(ctypes.addressof(anchor), length, vec)
        del anchor
        assert rc == 0, os.strerror(ctypes.get_errno())
    finally:
        mapping.close()
    return [bool(b & 1) for b in vec.raw]


def test_an_unaligned_buffer_falls_back_to_buffered_writes(tmp_path):
    """A buffer the device cannot take (its address is not block-aligned) is
    refused with EINVAL: the sink stops trying O_DIRECT and writes it, and
    every later one, through the page cache."""
    task = _store_one_piece(tmp_path, PIECE)
    direct = task.direct_fd
    arena = mmap.mmap(-1, PIECE + 4096)
    try:
        sink = FileSink(task.fd, 0, PIECE, 4096, direct=direct)
        arena[8:8 + PIECE] = BODY
        with memoryview(arena)[8:8 + PIECE] as misaligned:
            _write(sink, misaligned, 4096, 0)
            assert sink.error is None and sink.direct == -1
            _write(sink, misaligned[4096:], PIECE - 4096, 4096)
        assert sink.error is None
        assert os.pread(task.fd, PIECE, 0) == BODY
    finally:
        sink.close()
        arena.close()
        task.close()
