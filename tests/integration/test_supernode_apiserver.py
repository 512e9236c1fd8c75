"""supernode.apiserver over real loopback sockets, with a scripted Api behind it.

The routes themselves are tested through the real service in
test_supernode_api.py; here it is the HTTP/1.1 the server speaks: keep-alive
and pipelining in order, bodies and their limits, Expect: 100-continue,
HEAD, HTTP/1.0, malformed requests, idle connections, slow clients and
shutdown.
"""

from __future__ import annotations

import asyncio

import pytest

from supernode.apiserver import ApiServer
from tests.helpers import run
from tests.integration.snharness import until


class EchoApi:
    """Answers with what it got; ``/slow`` takes a while, ``/boom`` is a 500,
    ``/big`` is 4 MiB."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def handle(self, method: str, target: str, body: bytes):
        self.seen.append((method, target, body))
        if target == "/slow":
            await asyncio.sleep(0.2)
        if target == "/boom":
            return 500, "application/json", b'{"error": "internal error"}'
        if target == "/big":
            return 200, "application/json", b'"' + b"x" * (4 << 20) + b'"'
        return 200, "application/json", b'{"echo": "%s %s %d"}' % (
            method.encode(), target.encode(), len(body))


async def stuck_client(port: int) -> asyncio.StreamWriter:
    """A connection that asks for 64 MiB of answers and never reads them."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big HTTP/1.1\r\n\r\n" * 16)
    await writer.drain()
    return writer


async def exchange(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if until_close:
            return await asyncio.wait_for(reader.read(), 5)
        return await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()


def test_pipelined_requests_are_answered_in_order_on_one_connection():
    async def main():
        api = EchoApi()
        async with ApiServer(api, "127.0.0.1", 0) as server:
            out = await exchange(server.port,
                                 b"POST /slow HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                                 b"GET /fast HTTP/1.1\r\n\r\n"
                                 b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
        answers = out.split(b"HTTP/1.1 ")[1:]
        assert [a.split(b"\r\n\r\n", 1)[1] for a in answers] == [
            b'{"echo": "POST /slow 3"}', b'{"echo": "GET /fast 0"}', b'{"echo": "GET /last 0"}']
        assert all(b"Content-Type: application/json" in a for a in answers)
        assert b"Connection: close" in answers[2]
        assert api.seen[0] == ("POST", "/slow", b"abc")

    run(main())


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /x HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n", b"413"),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", b"411"),
    (b"POST /x HTTP/1.1\r\nContent-Length: ten\r\n\r\n", b"400"),
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /x HTTP/1.1\r\nno colon\r\n\r\n", b"400"),
    (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n", b"431"),
])
def test_a_bad_request_gets_its_status_as_json_and_the_connection_closes(request_bytes,
                                                                         status):
    async def main():
        api = EchoApi()
        async with ApiServer(api, "127.0.0.1", 0) as server:
            out = await exchange(server.port, request_bytes)
            assert out.startswith(b"HTTP/1.1 " + status + b" ")
            assert b"Connection: close" in out and b'{"error":' in out
            assert not api.seen                 # nothing reached the routes
            # ...and the server still serves the next client.
            again = await exchange(server.port, b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
            assert again.startswith(b"HTTP/1.1 200 OK\r\n")

    run(main())


def test_expect_100_continue_gets_its_interim_answer():
    async def main():
        api = EchoApi()
        async with ApiServer(api, "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"body")
            head = await asyncio.wait_for(reader.readuntil(b'"POST /x 4"}'), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            # Pipelined behind a GET, the 100 comes after the GET's answer.
            writer.write(b"GET /first HTTP/1.1\r\n\r\n"
                         b"POST /y HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
            first = await asyncio.wait_for(reader.readuntil(b'"GET /first 0"}'), 5)
            assert first.startswith(b"HTTP/1.1 200 OK\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            writer.close()
        assert api.seen == [("POST", "/x", b"body"), ("GET", "/first", b""),
                            ("POST", "/y", b"ok")]

    run(main())


def test_head_has_the_length_and_no_body_and_http10_closes():
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0) as server:
            head = await exchange(server.port, b"HEAD /healthz HTTP/1.0\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
        assert b"Content-Length: 27\r\n" in head    # len(b'{"echo": "HEAD /healthz 0"}')
        assert b"Connection: close" in head

    run(main())


def test_a_500_keeps_the_connection():
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0) as server:
            out = await exchange(server.port, b"GET /boom HTTP/1.1\r\n\r\n"
                                              b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert out.count(b"HTTP/1.1 ") == 2 and out.endswith(b'{"echo": "GET /ok 0"}')

    run(main())


def test_idle_connections_are_closed_and_shutdown_ends_open_ones():
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0, idle_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""     # closed when idle
            writer.close()
        async with ApiServer(EchoApi(), "127.0.0.1", 0) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /x HTTP/1.1\r\n")                       # half a request
            await writer.drain()
            await until(lambda: server.connections == 1)
        # Leaving the server ended the connection (and run() checks no task leaked).
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()

    run(main())


def test_a_request_trickled_in_gets_408_when_its_time_is_up():
    # Each header line comes well inside the idle timeout, so only the
    # deadline on the whole request can end this.
    async def main():
        api = EchoApi()
        async with ApiServer(api, "127.0.0.1", 0, idle_timeout=5.0,
                             request_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            answer = asyncio.ensure_future(reader.read())
            writer.write(b"GET /x HTTP/1.1\r\n")
            loop = asyncio.get_running_loop()
            started = loop.time()
            while not answer.done() and loop.time() - started < 3.0:
                try:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
                except ConnectionError:
                    break
                await asyncio.sleep(0.05)
            data = await asyncio.wait_for(answer, 5)
            elapsed = loop.time() - started
            writer.close()
            assert data.startswith(b"HTTP/1.1 408 "), data[:80]
            assert b"request not sent in time" in data
            assert elapsed < 2.0
            assert api.seen == []                   # the request never reached the API
            await until(lambda: server.connections == 0)

    run(main())


def test_a_client_that_never_reads_its_answers_is_dropped():
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0, idle_timeout=60.0,
                             request_timeout=0.3) as server:
            writer = await stuck_client(server.port)
            try:
                await until(lambda: server.connections == 1)
                await until(lambda: server.connections == 0, timeout=5.0)
            finally:
                writer.transport.abort()    # if the server kept it, this frees it

    run(main())


def test_requests_in_time_on_one_connection_are_not_cut_off():
    # The deadline is per request: a connection that keeps sending whole
    # requests outlives it many times over.
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0, request_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            for i in range(8):
                writer.write(b"GET /n%d HTTP/1.1\r\n" % i)
                await asyncio.sleep(0.05)
                writer.write(b"\r\n")
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 5)
                assert line.startswith(b"HTTP/1.1 200 "), line
                await asyncio.sleep(0.05)
                while (await asyncio.wait_for(reader.readline(), 5)) != b"\r\n":
                    pass
                await asyncio.wait_for(reader.readuntil(b"}"), 5)
            writer.close()

    run(main())


def test_shutdown_is_not_held_up_by_a_client_that_never_reads():
    # A guard: on this Python (3.11) wait_closed does not wait for
    # connections, so only from 3.12 on would the old code hang here.
    async def main():
        server = ApiServer(EchoApi(), "127.0.0.1", 0)        # default timeouts: 30 s
        await server.__aenter__()
        writer = await stuck_client(server.port)
        await until(lambda: any(w.transport.get_write_buffer_size()   # answers pile up
                                for w in server._conns.values()))
        await asyncio.wait_for(server.__aexit__(None, None, None), 5)
        assert server.connections == 0
        writer.close()

    run(main())


def test_a_body_that_never_comes_gets_408_too():
    # The head is whole; its body is what the client holds back.
    async def main():
        async with ApiServer(EchoApi(), "127.0.0.1", 0, idle_timeout=5.0,
                             request_timeout=0.3) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(b"POST /x HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
                await writer.drain()
                return await asyncio.wait_for(reader.read(), 2)
            finally:
                writer.transport.abort()

    assert run(main()).startswith(b"HTTP/1.1 408 ")
