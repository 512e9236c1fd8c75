"""The supernode API's HTTP/1.1 server: asyncio streams and engine.http1, no aiohttp.

Why not aiohttp's server: the supernode answers about one schedule call per
piece per peer, and at N = 40 in the lab (every process on 2 cores) its
process held the GIL for about 70 % of a core, a good share of it in
aiohttp's request and response machinery rather than in the scheduler. The
API needs little of it: JSON bodies framed by Content-Length, keep-alive,
pipelining answered in order. Measured (perf/bench_scheduler_http.py, 1,000
peers, its aiohttp client on the same 2 cores): 5,544 and 5,466 requests a
second against 4,811 and 4,748 with aiohttp's server. In the lab at N = 40
the difference is inside the noise (16.07 and 15.78 s against 16.13 and
15.47 s): the supernode is a tenth of that run's CPU.

Per connection, one task reads, feeds ``engine.http1.RequestParser`` and
answers each complete request with ``supernode.api.Api.handle`` before it
reads the next. A malformed request gets its 4xx and the connection is
closed; so does a client that asked for it (Connection: close, HTTP/1.0
without keep-alive). A connection idle for ``idle_timeout`` is closed, and a
client that sends ``Expect: 100-continue`` (curl does, for larger bodies)
gets its "100 Continue".

Slow clients. The idle timeout alone lets a client hold a connection and
its buffer for ever by sending a byte now and then, or by never reading
the answers. So a request must be in whole within ``request_timeout`` of
its first byte (else 408 and the connection closes), and an answer must be
taken by the client within ``request_timeout`` (else the connection closes).
A peer's calls are a few hundred bytes each way, so the default is far
above what a working client needs.

``ApiServer`` is an async context manager: entering binds (port 0 picks a
free one, read back from ``port``), leaving stops listening and ends every
connection. One event loop owns it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson

from engine import http1
from supernode.api import Api

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20
IDLE_TIMEOUT = 75.0           # aiohttp's keep-alive default, which the API used before
REQUEST_TIMEOUT = 30.0        # to send a whole request, or to take a whole answer
LINGER = 1.0                  # after a refusal, how long the client's late bytes are drained
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ApiServer:
    def __init__(self, api: Api, host: str, port: int, *,
                 idle_timeout: float = IDLE_TIMEOUT, request_timeout: float = REQUEST_TIMEOUT,
                 max_body: int = MAX_BODY) -> None:
        self.api, self.host, self.port = api, host, port
        self.idle_timeout, self.request_timeout = idle_timeout, request_timeout
        self.max_body = max_body
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.Task, asyncio.StreamWriter] = {}

    async def __aenter__(self) -> ApiServer:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._conns)

    async def __aexit__(self, *exc) -> None:
        # Closing a connection ends its task at its next read; one still
        # inside a handler (a register waiting for the origin) is cancelled.
        # A closed transport still waits to flush its answers, so one whose
        # client stopped reading is aborted after the grace period: from
        # Python 3.12 on, wait_closed waits for every connection, and would
        # wait for ever (3.11's returns without them).
        self._server.close()
        writers = dict(self._conns)
        for writer in writers.values():
            writer.close()
        if writers:
            _, late = await asyncio.wait(list(writers), timeout=1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            for writer in writers.values():
                writer.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            # The client went away, went quiet or stopped reading: answers
            # it has not taken are dropped, not left to hold the socket.
            writer.transport.abort()
        except asyncio.CancelledError:
            # Only __aexit__ cancels a connection; ending quietly keeps
            # asyncio from logging the handler's cancellation as an error.
            pass
        finally:
            del self._conns[task]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = http1.RequestParser(self.max_body)
        loop = asyncio.get_running_loop()
        due: float | None = None    # when the request begun must be in whole
        while True:
            try:
                async with asyncio.timeout_at(
                        loop.time() + self.idle_timeout if due is None else due):
                    data = await reader.read(65536)
            except TimeoutError:
                if due is not None:
                    await self._refuse(reader, writer, 408, "request not sent in time")
                return
            if not data:
                return
            try:
                requests = parser.feed(data)
            except http1.ProtocolError as exc:
                await self._refuse(reader, writer, exc.status, str(exc))
                return
            for request in requests:
                status, kind, body = await self.api.handle(request.method, request.target,
                                                           request.body)
                await self._send(writer, status, kind, body, keep_alive=request.keep_alive,
                                 head_only=request.method == "HEAD")
                if not request.keep_alive:
                    return
            if requests or not parser.begun:
                due = None
            if parser.begun and due is None:
                due = loop.time() + self.request_timeout
            if parser.continue_due and not writer.is_closing():  # after earlier answers
                parser.continue_due = False
                writer.write(_CONTINUE)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      status: int, message: str) -> None:
        """Answer ``status`` and end the connection so that the client reads it.

        A client may still be sending: closing with its bytes unread would
        reset the connection, and the reset can destroy the answer before the
        client reads it. So the answer goes out with a FIN, and what still
        comes in is read and dropped for up to ``LINGER`` seconds.
        """
        await self._send(writer, status, "application/json",
                         orjson.dumps({"error": message}), keep_alive=False)
        if writer.can_write_eof():
            writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(LINGER):
                while await reader.read(65536):
                    pass

    async def _send(self, writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, *,
                    keep_alive: bool, head_only: bool = False) -> None:
        if writer.is_closing():
            # Closed by __aexit__, or lost while an earlier answer drained (that
            # error is not raised there): uvloop refuses writes to a closed
            # transport with a RuntimeError, so end the connection here.
            raise ConnectionResetError("the connection is closing")
        head = http1.response_head(status, len(body), {"Content-Type": kind}, keep_alive)
        writer.write(head if head_only else head + body)
        with contextlib.suppress(ConnectionError):
            if not writer.transport.get_write_buffer_size():
                await writer.drain()        # all sent: it cannot block (and no timer)
                return
            # A client that does not read its answers ends its connection
            # (the TimeoutError reaches _accept) instead of holding it.
            async with asyncio.timeout(self.request_timeout):
                await writer.drain()
