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
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ApiServer:
    def __init__(self, api: Api, host: str, port: int, *,
                 idle_timeout: float = IDLE_TIMEOUT, max_body: int = MAX_BODY) -> None:
        self.api, self.host, self.port = api, host, port
        self.idle_timeout, self.max_body = idle_timeout, max_body
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
        self._server.close()
        for writer in self._conns.values():
            writer.close()
        if self._conns:
            _, late = await asyncio.wait(list(self._conns), timeout=1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass                    # the client went away or went quiet
        except asyncio.CancelledError:
            # Only __aexit__ cancels a connection; ending quietly keeps
            # asyncio from logging the handler's cancellation as an error.
            pass
        finally:
            del self._conns[task]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = http1.RequestParser(self.max_body)
        while True:
            async with asyncio.timeout(self.idle_timeout):
                data = await reader.read(65536)
            if not data:
                return
            try:
                requests = parser.feed(data)
            except http1.ProtocolError as exc:
                await _send(writer, exc.status, "application/json",
                            orjson.dumps({"error": str(exc)}), keep_alive=False)
                return
            for request in requests:
                status, kind, body = await self.api.handle(request.method, request.target,
                                                           request.body)
                await _send(writer, status, kind, body, keep_alive=request.keep_alive,
                            head_only=request.method == "HEAD")
                if not request.keep_alive:
                    return
            if parser.continue_due:         # after the answers to earlier requests
                parser.continue_due = False
                writer.write(_CONTINUE)


async def _send(writer: asyncio.StreamWriter, status: int, kind: str, body: bytes, *,
                keep_alive: bool, head_only: bool = False) -> None:
    head = http1.response_head(status, len(body), {"Content-Type": kind}, keep_alive)
    writer.write(head if head_only else head + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
