"""A real origin for tests: an aiohttp server on a loopback port, with counters.

Each file is served at ``/files/<name>`` with behaviours chosen per file:
Content-Length + Range + validators (the default), no Range support, chunked
without a length, a connection dropped mid-body (a given number of times), a
required Authorization header, a fixed error status, or a body shorter than
its Content-Length. ``requests[name]`` counts every GET, ``seen_headers``
keeps the request headers of each, so tests can check what reached it.

Usage::

    async with Origin() as origin:
        origin.add("big", data, drop_after=300_000)
        url = origin.url("big")
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from email.utils import formatdate

from aiohttp import web

_RANGE = re.compile(r"bytes=(\d+)-\Z")


@dataclass
class OriginFile:
    data: bytes
    ranges: bool = True           # honour Range: bytes=N-
    chunked: bool = False         # no Content-Length, chunked encoding
    drop_after: int | None = None  # close the connection after this many body bytes...
    drops: int = 1                # ...this many times
    auth: str | None = None       # required Authorization value
    status: int | None = None     # always answer this status
    short_by: int = 0             # announce len(data) but send len(data) - short_by
    delay: float = 0.0            # pause before the head (keeps a fetch in progress)
    hold_after: int = 0           # with ``release``: send this many bytes, then wait
    release: asyncio.Event | None = None  # hold the rest of the body until set
    then: bytes | None = None     # the content from the second request on (a change)
    validators: bool = True       # send ETag and Last-Modified
    mtime: float = 1_700_000_000.0
    headers_seen: list[dict[str, str]] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


class Origin:
    def __init__(self) -> None:
        self.files: dict[str, OriginFile] = {}
        self.requests: Counter[str] = Counter()
        self.bytes_sent = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    def add(self, name: str, data: bytes, **behaviour) -> OriginFile:
        self.files[name] = OriginFile(data, **behaviour)
        return self.files[name]

    def url(self, name: str, query: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/files/{name}" + (f"?{query}" if query else "")

    async def __aenter__(self) -> Origin:
        app = web.Application()
        app.router.add_get("/files/{name}", self._serve)
        app.router.add_get("/redirect/{name}", self._redirect)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"/files/{request.match_info['name']}")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests[name] += 1
        f = self.files.get(name)
        if f is None:
            return web.Response(status=404, text="no such file\n")
        f.headers_seen.append(dict(request.headers))
        if len(f.headers_seen) == 2 and f.then is not None:
            f.data, f.mtime = f.then, f.mtime + 1
        if f.delay:
            await asyncio.sleep(f.delay)
        if f.status is not None:
            return web.Response(status=f.status, text=f"status {f.status}\n")
        if f.auth is not None and request.headers.get("Authorization") != f.auth:
            return web.Response(status=401, text="unauthorized\n")
        last_modified = formatdate(f.mtime, usegmt=True)
        validators = {"ETag": f.etag, "Last-Modified": last_modified} if f.validators else {}
        if f.validators and request.headers.get("If-None-Match") == f.etag:
            return web.Response(status=304, headers=validators)
        start, status = 0, 200
        m = _RANGE.match(request.headers.get("Range", ""))
        if_range = request.headers.get("If-Range")
        if f.ranges and m and (if_range is None or if_range in (f.etag, last_modified)):
            start, status = int(m.group(1)), 206
            if start >= len(f.data):
                return web.Response(status=416, headers={
                    "Content-Range": f"bytes */{len(f.data)}"})
        body = f.data[start:]
        resp = web.StreamResponse(status=status, headers=validators)
        if status == 206:
            resp.headers["Content-Range"] = f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
        if f.ranges:
            resp.headers["Accept-Ranges"] = "bytes"
        if f.chunked:
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        if f.release is not None and not f.release.is_set():
            await self._write(resp, body[:f.hold_after])
            await f.release.wait()
            body = body[f.hold_after:]
        cut = len(body) - f.short_by if f.short_by else None
        if f.drop_after is not None and f.drops > 0 and f.drop_after < len(body):
            f.drops -= 1
            cut = f.drop_after
        await self._write(resp, body[:cut] if cut is not None else body)
        if cut is not None:
            # Break the connection mid-body: the client sees fewer bytes than
            # announced (or a chunked body without its last chunk).
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp

    async def _write(self, resp: web.StreamResponse, body: bytes) -> None:
        step = 64 * 1024
        for i in range(0, len(body), step):
            await resp.write(body[i:i + step])
            self.bytes_sent += min(step, len(body) - i)
