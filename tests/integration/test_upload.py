"""The upload server on loopback: exact pieces, ranges, 404/503, bad requests."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.upload import UploadServer
from engine.types import TaskId
from tests.helpers import run
from tests.integration.snharness import until

PIECE = 1 << 20


async def _get(port: int, raw: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        status_line = await reader.readline()
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        return int(status_line.split()[1]), headers, body
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
def seeded(tmp_path):
    data = os.urandom(2 * PIECE + 100)
    store = PieceStore(str(tmp_path))
    task = store.create(TaskMeta.new(TaskId.of("u"), "http://o/u", PieceLayout(len(data), PIECE)))
    for i in (0, 2):  # piece 1 is missing on purpose
        r = task.layout.range(i)
        task.write_piece(i, data[r.start:r.end])
        task.commit_piece(i, hashlib.sha256(data[r.start:r.end]).hexdigest())
    yield store, task, data
    task.close()


def test_serves_exact_pieces_and_ranges(seeded):
    store, task, data = seeded
    tid = task.task_id.hex

    async def main():
        async with UploadServer(store) as server:
            status, _, body = await _get(server.port, f"GET /pieces/{tid}/0 HTTP/1.1\r\n\r\n".encode())
            assert status == 200 and body == data[:PIECE]
            status, _, body = await _get(server.port, f"GET /pieces/{tid}/2 HTTP/1.1\r\n\r\n".encode())
            assert status == 200 and body == data[2 * PIECE:]
            status, h, body = await _get(
                server.port, f"GET /pieces/{tid}/0 HTTP/1.1\r\nRange: bytes=10-19\r\n\r\n".encode())
            assert (status, body, h["content-range"]) == (206, data[10:20], f"bytes 10-19/{PIECE}")
            status, _, _ = await _get(server.port, f"GET /pieces/{tid}/1 HTTP/1.1\r\n\r\n".encode())
            assert status == 404
            return server.stats

    stats = run(main())
    assert stats["pieces"] == 3 and stats["not_found"] == 1


def test_a_complete_task_written_after_it_was_served_is_served_no_more(tmp_path):
    data = os.urandom(2 * PIECE)
    store = PieceStore(str(tmp_path))
    task = store.create(TaskMeta.new(TaskId.of("w"), "http://o/w", PieceLayout(len(data), PIECE)))
    for i in (0, 1):
        task.write_piece(i, data[i * PIECE:(i + 1) * PIECE])
        task.commit_piece(i, hashlib.sha256(data[i * PIECE:(i + 1) * PIECE]).hexdigest())
    task.finish(hashlib.sha256(data).hexdigest())
    task.close()
    target = f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode()

    async def main():
        async with UploadServer(store) as server:
            status, _, body = await _get(server.port, target)  # opened and kept open
            assert status == 200 and body == data[:PIECE]
            # A hard-linked output, edited in place: the cache's own inode.
            with open(os.path.join(store.task_path(task.task_id), "data"), "r+b") as f:
                f.write(b"edited")
            status, _, body = await _get(server.port, target)
            assert status == 404 and b"edited" not in body
            return server.stats

    stats = run(main())
    assert stats["pieces"] == 1 and stats["not_found"] == 1


@pytest.mark.parametrize("target,status", [
    ("/pieces/../../etc/passwd/0", 404), ("/pieces/" + "A" * 64 + "/0", 404),
    ("/pieces/" + "a" * 64 + "/0", 404), ("/pieces/x/-1", 404), ("/etc/passwd", 404),
])
def test_bad_targets_never_touch_the_filesystem(seeded, target, status):
    store, _, _ = seeded

    async def main():
        async with UploadServer(store) as server:
            return (await _get(server.port, f"GET {target} HTTP/1.1\r\n\r\n".encode()))[0]

    assert run(main()) == status


def test_garbage_gets_400_and_the_server_keeps_serving(seeded):
    store, task, data = seeded

    async def main():
        async with UploadServer(store) as server:
            bad = await _get(server.port, b"\x16\x03\x01 garbage\r\n\r\n")
            good = await _get(server.port, f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode())
            return bad[0], good

    bad, (status, _, body) = run(main())
    assert bad == 400 and status == 200 and body == data[:PIECE]


def test_full_upload_slots_answer_503(seeded):
    store, task, _ = seeded

    async def main():
        async with UploadServer(store, slots=0) as server:
            return await _get(server.port, f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode())

    status, headers, _ = run(main())
    assert status == 503 and headers["retry-after"] == "1"


def test_pacer_holds_every_chunk(seeded):
    store, task, data = seeded
    asked = []

    class Pacer:
        async def acquire(self, nbytes):
            asked.append(nbytes)

    async def main():
        async with UploadServer(store, pacer=Pacer()) as server:
            return await _get(server.port, f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode())

    status, _, body = run(main())
    assert status == 200 and body == data[:PIECE] and sum(asked) == PIECE


def test_a_task_forgotten_mid_send_still_sends_its_own_bytes(seeded, tmp_path):
    # forget() used to close the file under a running sendfile: the next file
    # opened could take its descriptor number, and the rest of the piece came
    # from that file.
    store, task, data = seeded
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"\xee" * (4 * PIECE))
    sending, gate = asyncio.Event(), asyncio.Event()

    class Gate:                                     # holds the send before its first chunk
        async def acquire(self, nbytes):
            sending.set()
            await gate.wait()

    async def main():
        async with UploadServer(store, pacer=Gate()) as server:
            get = asyncio.create_task(
                _get(server.port, f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode()))
            await asyncio.wait_for(sending.wait(), 10)   # the send has begun
            server.forget(task.task_id)
            decoys = [os.open(decoy, os.O_RDONLY) for _ in range(8)]
            try:
                gate.set()
                result = await get
            finally:
                for fd in decoys:
                    os.close(fd)
            return result, dict(server._sending), set(server._retired)

    (status, _, body), sending, retired = run(main())
    assert status == 200 and body == data[:PIECE]
    assert not sending and not retired               # closed by its last sender


def test_an_idle_connection_is_closed(seeded, monkeypatch):
    import engine.upload
    monkeypatch.setattr(engine.upload, "IDLE_TIMEOUT", 0.2)
    store, task, data = seeded

    async def main():
        async with UploadServer(store) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                return await asyncio.wait_for(reader.read(), 5)
            finally:
                writer.close()

    assert run(main()) == b""


def test_a_request_trickled_in_is_cut_off(seeded, monkeypatch):
    # Every header line comes well inside the idle timeout; only the
    # deadline on the whole request can end this.
    import engine.upload
    monkeypatch.setattr(engine.upload, "REQUEST_TIMEOUT", 0.3)
    store, task, _ = seeded

    async def main():
        async with UploadServer(store) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            loop = asyncio.get_running_loop()
            closed = asyncio.ensure_future(reader.read())
            writer.write(f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n".encode())
            started = loop.time()
            try:
                while not closed.done() and loop.time() - started < 3.0:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.05)
                data = await asyncio.wait_for(closed, 5)
            except ConnectionError:
                data = b""
            finally:
                writer.transport.abort()
            return data, loop.time() - started

    data, elapsed = run(main())
    assert data == b"" and elapsed < 2.0


def test_a_downloader_that_stops_reading_loses_its_slot(seeded, monkeypatch):
    import engine.upload
    monkeypatch.setattr(engine.upload, "SEND_STALL", 0.3)
    store, task, data = seeded
    get = f"GET /pieces/{task.task_id.hex}/0 HTTP/1.1\r\n\r\n".encode()

    async def main():
        async with UploadServer(store, slots=1) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(get * 32)      # 32 MiB of pieces, never read
                await writer.drain()
                await until(lambda: server._busy == 1)   # its send holds the slot
                for _ in range(50):         # the one slot is held until the stall ends it
                    status, _, body = await asyncio.wait_for(_get(server.port, get), 5)
                    if status == 200:
                        return body
                    assert status == 503
                    await asyncio.sleep(0.1)
                return None                 # still held after 5 s
            finally:
                writer.transport.abort()

    body = run(main())
    assert body is not None, "the stalled send still held the only upload slot after 5 s"
    assert hashlib.sha256(body).digest() == hashlib.sha256(data[:PIECE]).digest()
