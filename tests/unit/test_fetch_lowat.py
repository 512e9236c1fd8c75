"""When a piece connection asks the kernel to wake it (SO_RCVLOWAT): per
RECV_LOWAT bytes of body, then once for the rest, then at every byte
between responses. Driven through the protocol calls, no socket."""

from __future__ import annotations

import asyncio
import os

from engine.download.fetch import RECV_LOWAT, PieceConnection
from engine.download.sinks import MemorySink
from tests.helpers import run

SIZE = 1 << 20
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE


class _Sock:
    def __init__(self) -> None:
        self.marks: list[int] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.marks.append(value)

    def close(self) -> None:
        pass


class _Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _deliver(conn: PieceConnection, data: bytes) -> None:
    while data:
        buf = conn.get_buffer(-1)
        n = min(len(buf), len(data))
        buf[:n] = data[:n]
        conn.buffer_updated(n)
        data = data[n:]


def test_the_mark_follows_the_body_and_drops_to_one_between_responses():
    body = os.urandom(SIZE)
    target = bytearray(SIZE)
    step = 300 << 10

    async def main():
        conn = PieceConnection("127.0.0.1:1")
        conn.transport, conn._sock = _Transport(), _Sock()
        fetch = asyncio.ensure_future(conn.request(b"GET / HTTP/1.1\r\n\r\n", MemorySink(target)))
        await asyncio.sleep(0)          # one loop turn: the request runs up to its wait
        assert conn._response is not None, "the request is not out yet"
        _deliver(conn, HEAD)
        for at in range(0, SIZE, step):
            _deliver(conn, body[at:at + step])
        response = await fetch
        return response, conn._sock.marks

    response, marks = run(main())
    assert response.status == 200 and bytes(target) == body
    tail = SIZE - 3 * step          # what the body still owed after three reads
    assert 0 < tail < RECV_LOWAT
    assert marks == [RECV_LOWAT, tail, 1]
