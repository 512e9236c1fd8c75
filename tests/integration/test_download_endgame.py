"""Endgame in the download loop: a second source races a stalled first attempt.

A scripted supernode (a few lines of aiohttp) hands out piece 0 first from
one source and, a little later, from a second one, as the scheduler does
near the end of a download when an attempt has run for ``endgame_delay``.
The sources are raw loopback servers that answer after a delay, or never.
The piece timeout is far longer than the test's own, so the download can
only finish in time if the second attempt really races the first.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

from aiohttp import web

from engine.download import Downloader, DownloadRequest
from engine.messages import (Assignment, PeerInfo, PieceResult, ScheduleRequest,
                             ScheduleResponse, TaskView)
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from tests.helpers import run

PIECE = 1 << 20
DATA = os.urandom(PIECE)
TID = TaskId.of("endgame-test")


class PieceServer:
    """A loopback server answering every piece request with DATA after
    ``delay`` seconds, or never (None)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self.handlers: set[asyncio.Task] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.handlers:
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        self.handlers.add(me)
        delay = self.delay
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                if delay is None:
                    await asyncio.sleep(3600)
                await asyncio.sleep(delay)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(DATA) + DATA)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self.handlers.discard(me)


class ScriptedSupernode:
    """Assigns piece 0 from ``first``; ``second_after`` seconds later from ``second``."""

    def __init__(self, first: str, second: str, second_after: float = 0.2) -> None:
        self.sources = {"first": first, "second": second}
        self.second_after = second_after
        self.results: list[PieceResult] = []
        self.started: float | None = None
        self.raced = False
        self.view = TaskView(TID, "complete", PIECE, PIECE, 1, hashlib.sha256(DATA).hexdigest())

    def assign(self, name: str) -> ScheduleResponse:
        a = Assignment(0, PeerId(name), self.sources[name], PIECE,
                       hashlib.sha256(DATA).hexdigest())
        return ScheduleResponse("assign", self.view, (a,))

    def decide(self, req: ScheduleRequest) -> ScheduleResponse:
        self.results.extend(req.results)
        loop = asyncio.get_running_loop()
        if any(r.ok for r in self.results):
            return ScheduleResponse("done", self.view)
        if self.started is None:
            self.started = loop.time()
            return self.assign("first")
        if not self.raced and loop.time() - self.started >= self.second_after:
            self.raced = True
            return self.assign("second")
        return ScheduleResponse("wait", self.view, wait_ms=20)

    async def __aenter__(self) -> ScriptedSupernode:
        async def register(request: web.Request) -> web.Response:
            return web.json_response(self.view.to_wire())

        async def schedule(request: web.Request) -> web.Response:
            req = ScheduleRequest.from_wire(await request.json())
            return web.json_response(self.decide(req).to_wire())

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/api/v1/register", register)
        app.router.add_post("/api/v1/schedule", schedule)
        app.router.add_post("/api/v1/heartbeat", ok)
        app.router.add_post("/api/v1/leave", ok)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.addr = f"127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


async def _download(tmp_path, first_delay: float | None, second_delay: float | None):
    async with PieceServer(first_delay) as first, PieceServer(second_delay) as second, \
            ScriptedSupernode(first, second) as node, Downloader(
                PieceStore(str(tmp_path / "store")), [node.addr],
                PeerInfo(PeerId("leech"), "127.0.0.1", 1), piece_timeout=120.0) as dl:
        request = DownloadRequest("http://origin.invalid/f", back_source=False)
        task = await asyncio.wait_for(dl.download(request), 20)
        try:
            with task.view(0) as held:
                assert bytes(held) == DATA
            assert task.complete and task.meta.sha256 == hashlib.sha256(DATA).hexdigest()
        finally:
            task.close()
        return node.results, dl.stats


def test_a_second_source_wins_over_a_stalled_first_attempt(tmp_path):
    results, stats = run(_download(tmp_path, None, 0.0))
    by_source = {str(r.source): r for r in results}
    assert by_source["second"].ok and by_source["second"].nbytes == PIECE
    # The stalled attempt was stopped and reported, long before its timeout.
    assert not by_source["first"].ok and by_source["first"].reason == "timeout"
    assert stats.bytes_from_peers == PIECE and stats.pieces_from_peers == 1


def test_a_first_attempt_that_finishes_first_cancels_the_race(tmp_path):
    results, stats = run(_download(tmp_path, 0.5, None))
    by_source = {str(r.source): r for r in results}
    assert by_source["first"].ok and by_source["first"].nbytes == PIECE
    # The stalled second source is answered with the piece's outcome, no bytes.
    assert by_source["second"].ok and by_source["second"].nbytes == 0
    assert stats.bytes_from_peers == PIECE and stats.pieces_failed == 0
