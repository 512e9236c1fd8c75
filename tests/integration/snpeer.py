"""A minimal test peer for the supernode API: register, schedule, fetch, verify, report.

It holds the file in memory and serves the pieces it has from a small
aiohttp server of its own (``GET /pieces/<task>/<n>``), so the scheduler may
hand one test peer's pieces to another, as in a real swarm. Every piece is
checked against the sha256 in its assignment before it is reported, and the
whole file against the task's sha256 at the end::

    async with TestPeer(session, node.url, "p1") as peer:
        result = await peer.download(url)
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from engine.messages import (
    PeerInfo, PieceResult, RegisterRequest, ScheduleRequest, ScheduleResponse, TaskView)
from engine.types import PeerId, TaskId


@dataclass
class PeerResult:
    action: str
    view: TaskView
    data: bytes | None = None
    message: str = ""
    sources: set[str] = field(default_factory=set)


class TestPeer:
    __test__ = False  # not a pytest class

    def __init__(self, session: aiohttp.ClientSession, api: str, name: str) -> None:
        self.session, self.api, self.name = session, api, name
        self.held: dict[tuple[str, int], bytes] = {}
        self.served = 0
        self._runner: web.AppRunner | None = None
        self.info: PeerInfo | None = None

    async def __aenter__(self) -> TestPeer:
        app = web.Application()
        app.router.add_get("/pieces/{task}/{n}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.info = PeerInfo(PeerId(self.name), "127.0.0.1", self._runner.addresses[0][1])
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.Response:
        body = self.held.get((request.match_info["task"], int(request.match_info["n"])))
        if body is None:
            return web.Response(status=404)
        self.served += 1
        return web.Response(body=body)

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        async with self.session.post(self.api + path, json=body) as resp:
            return resp.status, await resp.json()

    async def register(self, url: str, headers: dict | None = None, **kw) -> TaskView:
        req = RegisterRequest(url, self.info, headers or {}, **kw)
        status, body = await self.post("/api/v1/register", req.to_wire())
        assert status == 200, body
        return TaskView.from_wire(body)

    async def schedule(self, task: TaskId, results=(), want: int = 4) -> ScheduleResponse:
        req = ScheduleRequest(task, self.info.peer_id, tuple(results), want)
        status, body = await self.post("/api/v1/schedule", req.to_wire())
        assert status == 200, body
        return ScheduleResponse.from_wire(body)

    async def download(self, url: str, headers: dict | None = None, *,
                       deadline: float = 20.0, **kw) -> PeerResult:
        view = await self.register(url, headers, **kw)
        return await asyncio.wait_for(self._loop(view), deadline)

    async def resume(self, view: TaskView, deadline: float = 20.0) -> PeerResult:
        """Go on with a task this peer registered for already."""
        return await asyncio.wait_for(self._loop(view), deadline)

    async def _loop(self, view: TaskView) -> PeerResult:
        task = str(view.task_id)
        results: list[PieceResult] = []
        sources: set[str] = set()
        while True:
            resp = await self.schedule(view.task_id, results, want=4)
            results = []
            if resp.action == "wait":
                await asyncio.sleep(resp.wait_ms / 1000)  # the protocol's own pacing
                continue
            if resp.action != "assign":
                data = None
                if resp.action == "done":
                    data = b"".join(self.held[task, i] for i in range(resp.task.piece_count))
                    assert hashlib.sha256(data).hexdigest() == resp.task.sha256
                return PeerResult(resp.action, resp.task, data, resp.message, sources)
            fetched = await asyncio.gather(*(self._fetch(view.task_id, a)
                                             for a in resp.assignments))
            for a, body in zip(resp.assignments, fetched):
                ok = body is not None and hashlib.sha256(body).hexdigest() == a.sha256
                if ok:
                    self.held[task, a.piece] = body
                    sources.add(str(a.source))
                reason = "" if ok else "failed" if body is None else "corrupt"
                results.append(PieceResult(a.piece, a.source, ok, len(body or b""),
                                           reason=reason))

    async def _fetch(self, task: TaskId, a) -> bytes | None:
        try:
            async with self.session.get(f"http://{a.addr}/pieces/{task}/{a.piece}") as resp:
                if resp.status != 200:
                    return None
                body = await resp.read()
        except aiohttp.ClientError:
            return None
        assert len(body) == a.size
        return body
