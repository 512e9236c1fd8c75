"""engine.download.rpc, the supernode client, against scripted loopback servers.

Each server reads whole requests and answers what the test scripts, so the
client's contract is checked case by case: keep-alive reuse, a pooled
connection the server closed (sent again, once), an answer cut short (not
sent again), chunked and read-until-close bodies, garbage, timeouts, and how
``supernodes.call`` maps all of it to Unreachable and Refused.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from engine.download.rpc import BadAnswer, RpcClient
from engine.download.supernodes import Refused, Unreachable, call
from tests.helpers import dead_port, run
from tests.integration.snharness import until

HANG = object()


class Scripted:
    """A loopback HTTP server. ``answer(n, body)`` scripts the n-th request
    (counted over all connections): bytes to send and keep serving,
    ``(bytes, "close")`` to send and then close, ``None`` to close without
    a byte, ``HANG`` to never answer (until the client closes)."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.requests: list[tuple[int, bytes]] = []   # (connection number, body)
        self.connections = 0
        self.ended = 0                                  # connections the server closed
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = self.connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((conn, body))
                out = self.answer(len(self.requests), body)
                if out is None:
                    return
                if out is HANG:
                    await reader.read()         # until the client gives up and closes
                    return
                close = isinstance(out, tuple)
                writer.write(out[0] if close else out)
                await writer.drain()
                if close:
                    return
        finally:
            writer.close()
            self.ended += 1


def ok(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def echo(n: int, body: bytes) -> bytes:
    return ok(orjson.dumps({"n": n, "echo": orjson.loads(body)}))


def test_calls_share_one_kept_alive_connection():
    async def main():
        server = Scripted(echo)
        async with server as base:
            rpc = RpcClient()
            for i in range(5):
                status, data = await rpc.post(base, "/api/v1/schedule",
                                              orjson.dumps({"i": i}), 5)
                assert status == 200
                assert orjson.loads(data) == {"n": i + 1, "echo": {"i": i}}
            rpc.close()
        assert [conn for conn, _ in server.requests] == [1] * 5

    run(main())


def test_the_request_line_host_and_credentials_follow_the_url():
    async def main():
        server = Scripted(echo)
        async with server as base:
            rpc = RpcClient()
            await rpc.post(base + "/prefix/", "/api/v1/heartbeat", b"{}", 5)
            await rpc.post(base.replace("http://", "http://sn%40ops:p%3Ass@"), "/x", b"{}", 5)
            rpc.close()
        plain, with_user = (head.decode() for head in server.heads)
        assert plain.startswith("POST /prefix/api/v1/heartbeat HTTP/1.1\r\n")
        assert "\r\nContent-Length: 2\r\n" in plain
        assert "Authorization" not in plain
        assert "\r\nAuthorization: Basic c25Ab3BzOnA6c3M=\r\n" in with_user  # sn@ops:p:ss
        for head in (plain, with_user):
            assert f"\r\nHost: {base.removeprefix('http://')}\r\n" in head

    run(main())


def test_a_pooled_connection_the_server_closed_is_sent_again_on_a_fresh_one():
    # The first answer promises keep-alive, then the server closes the
    # connection (an idle timeout). The next call finds it dead before any
    # byte of an answer: the server never saw that request, so it is sent
    # again, once, on a new connection.
    def answer(n, body):
        return (ok(b'{"n": 1}'), "close") if n == 1 else ok(b'{"n": %d}' % n)

    async def main():
        server = Scripted(answer)
        async with server as base:
            rpc = RpcClient()
            assert await rpc.post(base, "/x", b"{}", 5) == (200, b'{"n": 1}')
            await until(lambda: server.ended == 1)  # the server closed it
            assert await rpc.post(base, "/x", b"{}", 5) == (200, b'{"n": 2}')
            rpc.close()
        assert [conn for conn, _ in server.requests] == [1, 2]

    run(main())


def test_an_answer_cut_short_is_an_error_and_is_not_sent_again():
    # The server saw the request and began answering: sending it again could
    # apply it twice (a schedule call's results), so the caller is told.
    # Both on a fresh connection and on a kept-alive one.
    def answer(n, body):
        return ok(b'{"n": 1}') if n == 2 else (ok(b'{"n": %d}' % n)[:-3], "close")

    async def main():
        server = Scripted(answer)
        async with server as base:
            rpc = RpcClient()
            with pytest.raises(ConnectionResetError, match="mid-answer"):
                await rpc.post(base, "/x", b"{}", 5)
            assert await rpc.post(base, "/x", b"{}", 5) == (200, b'{"n": 1}')
            with pytest.raises(ConnectionResetError, match="mid-answer"):
                await rpc.post(base, "/x", b"{}", 5)
            rpc.close()
        assert [conn for conn, _ in server.requests] == [1, 2, 2]

    run(main())


def test_connection_close_is_honoured():
    def answer(n, body):
        return (ok(b"{}", extra="Connection: close\r\n"), "close")

    async def main():
        server = Scripted(answer)
        async with server as base:
            rpc = RpcClient()
            for _ in range(3):
                assert await rpc.post(base, "/x", b"{}", 5) == (200, b"{}")
            assert not rpc._idle.get(base)
            rpc.close()
        assert [conn for conn, _ in server.requests] == [1, 2, 3]

    run(main())


def test_chunked_and_until_close_bodies():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"a\"\r\n5\r\n: 12}\r\n0\r\nX-Trailer: t\r\n\r\n")
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"b\": 3}"

    def answer(n, body):
        return chunked if n == 1 else (until_close, "close")

    async def main():
        server = Scripted(answer)
        async with server as base:
            rpc = RpcClient()
            assert await rpc.post(base, "/x", b"{}", 5) == (200, b'{"a": 12}')
            assert await rpc.post(base, "/x", b"{}", 5) == (200, b'{"b": 3}')
            rpc.close()
        assert [conn for conn, _ in server.requests] == [1, 1]

    run(main())


@pytest.mark.parametrize("garbage", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
])
def test_garbage_is_a_bad_answer(garbage):
    async def main():
        async with Scripted(lambda n, body: (garbage, "close")) as base:
            rpc = RpcClient()
            with pytest.raises(BadAnswer):
                await rpc.post(base, "/x", b"{}", 5)
            rpc.close()

    run(main())


def test_the_timeout_covers_the_whole_answer():
    async def main():
        async with Scripted(lambda n, body: HANG) as base:
            rpc = RpcClient()
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await rpc.post(base, "/x", b"{}", 0.3)
            assert time.monotonic() - start < 2
            assert not rpc._idle.get(base)      # a timed-out connection is not reused
            rpc.close()

    run(main())


def test_call_maps_outages_to_unreachable_and_4xx_to_refused():
    def answer(n, body):
        if n == 1:
            return ok(b'{"error": "no such peer"}', "404 Not Found")
        if n == 2:
            return ok(b"{}", "503 Service Unavailable")
        if n == 3:
            return ok(b"not json")
        return (b"nonsense\r\n\r\n", "close")

    async def main():
        async with Scripted(answer) as base:
            rpc = RpcClient()
            with pytest.raises(Refused, match="no such peer") as refused:
                await call(rpc, base, "/api/v1/schedule", {}, 5)
            assert refused.value.status == 404
            with pytest.raises(Unreachable, match="answered 503"):
                await call(rpc, base, "/api/v1/schedule", {}, 5)
            with pytest.raises(Exception, match="invalid JSON") as bad:
                await call(rpc, base, "/api/v1/schedule", {}, 5)
            assert not isinstance(bad.value, Unreachable)
            with pytest.raises(Unreachable, match="not an HTTP"):
                await call(rpc, base, "/api/v1/schedule", {}, 5)
            with dead_port() as dead:
                with pytest.raises(Unreachable, match="unreachable"):
                    await call(rpc, dead, "/api/v1/schedule", {}, 5)
            for url, why in (("http://:80", "not an http"), ("http://h:99999", "bad port"),
                             ("http://bücher.example", "non-ASCII")):
                with pytest.raises(Unreachable, match=why):
                    await call(rpc, url, "/api/v1/schedule", {}, 5)
            rpc.close()

    run(main())
