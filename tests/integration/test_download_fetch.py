"""One piece from a real upload server into the mmap of another store."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from engine.download.fetch import ConnectionPool, fetch_piece
from engine.download.local import commit
from engine.download.sinks import FileSink, MemorySink
from engine.meta import TaskMeta
from engine.messages import Assignment
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from engine.upload import UploadServer
from tests.helpers import run

PIECE = 1 << 20
DATA = os.urandom(3 * PIECE + 123)
LAYOUT = PieceLayout(len(DATA), PIECE)
TID = TaskId.of("fetch-test")


def _piece(i: int) -> bytes:
    r = LAYOUT.range(i)
    return DATA[r.start:r.end]


@pytest.fixture
def stores(tmp_path):
    seed = PieceStore(str(tmp_path / "seed"))
    task = seed.create(TaskMeta.new(TID, "http://o/f", LAYOUT))
    for i in (0, 1, 3):  # piece 2 is missing on purpose
        task.write_piece(i, _piece(i))
        task.commit_piece(i, hashlib.sha256(_piece(i)).hexdigest())
    task.close()
    leech = PieceStore(str(tmp_path / "leech"))
    target = leech.create(TaskMeta.new(TID, "http://o/f", LAYOUT))
    yield seed, target
    target.close()


def _assign(i: int, port: int) -> Assignment:
    return Assignment(i, PeerId("seed"), f"127.0.0.1:{port}", LAYOUT.size_of(i),
                      hashlib.sha256(_piece(i)).hexdigest())


async def _fetch(pool, target, i, port, timeout=5.0, receive="mmap"):
    if receive == "mmap":
        make_sink = lambda: MemorySink(target.view(i))  # noqa: E731
    else:
        make_sink = lambda: FileSink(target.fd, LAYOUT.range(i).start, LAYOUT.size_of(i))  # noqa: E731
    return await fetch_piece(pool, TID, _assign(i, port), make_sink, timeout)


@pytest.mark.parametrize("receive", ["mmap", "pwrite"])
def test_pieces_land_in_the_file_over_one_kept_alive_connection(stores, receive):
    seed, target = stores

    async def main():
        pool = ConnectionPool()
        try:
            async with UploadServer(seed) as server:
                outcomes = [await _fetch(pool, target, i, server.port, receive=receive)
                            for i in (0, 1, 3, 0)]
                missing = await _fetch(pool, target, 2, server.port)
                return outcomes, missing, pool.opened, server.stats
        finally:
            pool.close()

    outcomes, missing, opened, stats = run(main())
    assert [o.reason for o in outcomes] == [None] * 4
    assert [o.nbytes for o in outcomes] == [PIECE, PIECE, 123, PIECE]
    for i in (0, 1, 3):
        assert target.commit_piece(i, hashlib.sha256(_piece(i)).hexdigest())
        target.release(i)
    assert missing.reason == "failed" and "404" in missing.detail
    assert opened == 1 and stats["pieces"] == 4


def test_busy_server_is_refused(stores):
    seed, target = stores

    async def main():
        pool = ConnectionPool()
        try:
            async with UploadServer(seed, slots=0) as server:
                return await _fetch(pool, target, 0, server.port)
        finally:
            pool.close()

    assert run(main()).reason == "refused"


def test_silent_peer_times_out_and_dead_peer_fails(stores):
    _, target = stores

    async def main():
        accepted = asyncio.Event()

        async def silent(reader, writer):
            accepted.set()
            await reader.read()  # never answers; returns when we hang up
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = ConnectionPool()
        try:
            slow = await _fetch(pool, target, 0, port, timeout=0.2)
        finally:
            pool.close()
            server.close()
            await server.wait_closed()
        dead = await _fetch(pool, target, 0, port)  # nothing listens any more
        return slow, dead, accepted.is_set()

    slow, dead, accepted = run(main())
    assert accepted and slow.reason == "timeout" and dead.reason == "failed"


def test_a_stale_pooled_connection_is_retried_once(stores):
    seed, target = stores

    async def main():
        pool = ConnectionPool()
        try:
            server = UploadServer(seed)
            await server.start()
            port = server.port
            first = await _fetch(pool, target, 0, port)
            await server.close()  # drops the kept-alive connection
            server = UploadServer(seed, port=port)
            await server.start()
            try:
                second = await _fetch(pool, target, 1, port)
            finally:
                await server.close()
            return first, second, pool.opened
        finally:
            pool.close()

    first, second, opened = run(main())
    assert first.reason is None and second.reason is None and opened == 2
    assert target.commit_piece(1, hashlib.sha256(_piece(1)).hexdigest())


def _mapped_rss(path: str) -> int:
    """Bytes of ``path``'s mappings resident in this process (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip().endswith(path)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def test_committed_pieces_leave_this_process_rss(stores):
    """Receiving into the mmap faults pages in; committing releases them, so
    a downloader's RSS does not grow with the file."""
    seed, target = stores
    data_path = os.path.join(target.path, "data")

    async def main():
        pool = ConnectionPool()
        try:
            async with UploadServer(seed) as server:
                for i in (0, 1):
                    assert (await _fetch(pool, target, i, server.port)).reason is None
                resident = _mapped_rss(data_path)
                for i in (0, 1):
                    commit(target, i, hashlib.sha256(_piece(i)).hexdigest())
                return resident, _mapped_rss(data_path)
        finally:
            pool.close()

    before, after = run(main())
    assert before >= 2 * PIECE and after < 64 * 1024, (before, after)
