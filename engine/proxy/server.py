"""The registry mirror / HTTP proxy of a dfdaemon (``--proxy ip:port``).

One aiohttp server in the coordinator's event loop. ``rules.route`` says
where each request goes:

- a blob GET is fetched through the swarm: the proxy asks its own daemon
  over the local API socket, exactly as dfget does, for the blob's URL with
  the client's headers and the blob's digest (the daemon verifies the whole
  file against it, and falls back to the registry itself if the swarm
  fails), hard-linked into ``<data-dir>/proxy/``; the file is then sent
  with sendfile (Range requests included) and the link removed;
- everything else is passed through to the upstream and streamed back,
  status, headers and body as they are (no redirect followed, nothing
  decompressed).

Authorization. A blob in this host's cache was fetched with someone's
credentials; before handing it to a client, the proxy asks the registry
whether *this* client may have it: a HEAD with the client's headers, which
moves no body. Anything but a 2xx or a redirect (a 401 with its challenge, a
403, a 404) is answered by the registry itself: the request is passed
through, and not a byte of the cached blob goes out. So per blob and host
the registry sees one HEAD, and the blob's bytes leave it about once for
the whole swarm (the supernode's CDN fetches them).

If the daemon cannot deliver the blob (say, the supernode is down and the
registry refuses the daemon's own back-to-source), the request is passed
through: the client still gets its blob, from the registry.

CONNECT (``HTTPS_PROXY``) opens a tunnel to an allowed port and carries the
bytes as they are (engine.proxy.tunnel): TLS hides the blobs, so they do
not come from the swarm; the mirror form serves https registries' blobs.
Connections are accepted by ``tunnel.FrontDoor``, which hands every other
one to aiohttp.

Counters (``counters``) go into the daemon's stats as ``proxy``.
One event loop owns everything here; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from engine.errors import BadInput, BrokenByPeer, ConfigError, DamselflyError
from engine.localapi import Channel, DownloadCommand, error_from_event
from engine.meta import redact_url
from engine.proxy.rules import (
    Route, client_response_headers, route, swarm_headers, upstream_request_headers)
from engine.proxy.tunnel import FrontDoor, Tunnels

log = logging.getLogger(__name__)
CHUNK = 1 << 16
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # between two reads from the upstream; a long pull is fine
REDIRECTS = (301, 302, 303, 307, 308)


class Proxy:
    """Serve the mirror / proxy on ``host:port`` until ``close``."""

    def __init__(self, *, host: str, port: int, socket_path: str, data_dir: str,
                 registry: str = "", tunnel_ports: frozenset[int] = frozenset({443}),
                 on_busy: Callable[[], None] = lambda: None,
                 on_idle: Callable[[], None] = lambda: None) -> None:
        self.host, self.port = host, port
        self.socket_path = socket_path
        self.spool = os.path.join(data_dir, "proxy")
        self.registry = registry
        self._on_busy, self._on_idle = on_busy, on_idle
        self.active = 0
        self.counters = {"requests": 0, "passed": 0, "blobs": 0, "blob_bytes": 0,
                         "refused_by_upstream": 0, "fallbacks": 0, "errors": 0,
                         "tunnels": 0, "tunnel_bytes": 0, "tunnels_refused": 0}
        self.tunnels = Tunnels(tunnel_ports, self.counters, self._enter, self._leave)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        os.makedirs(self.spool, mode=0o700, exist_ok=True)
        for name in os.listdir(self.spool):  # links left by a crash
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.spool, name))
        self._session = aiohttp.ClientSession(
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT,
                                          sock_read=READ_TIMEOUT))
        # Every request, absolute URLs included, goes to _handle: the router
        # has nothing to say here.
        app = web.Application(client_max_size=0, middlewares=[self._entry])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        http = self._runner.server
        try:
            self._server = await asyncio.get_running_loop().create_server(
                lambda: FrontDoor(http, self.tunnels), self.host, self.port,
                reuse_address=True)
        except OSError as exc:
            await self.close()
            raise ConfigError(f"proxy cannot listen on {self.host}:{self.port}: "
                              f"{exc.strerror or exc}") from exc
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("registry mirror / proxy on %s:%d, upstream %s", self.host, self.port,
                 self.registry or "(proxy requests only)")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self.tunnels.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # --- one request -------------------------------------------------------------

    @web.middleware
    async def _entry(self, request: web.Request, handler) -> web.StreamResponse:
        return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.counters["requests"] += 1
        self._enter()
        try:
            return await self._serve(request)
        finally:
            self._leave()

    def _enter(self) -> None:
        """A request or tunnel starts: the daemon is busy."""
        self.active += 1
        self._on_busy()

    def _leave(self) -> None:
        self.active -= 1
        if not self.active:
            self._on_idle()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        if request.method == "CONNECT":
            # FrontDoor takes a CONNECT that opens its connection; this one
            # came after other requests on a keep-alive connection, and what
            # follows it is not HTTP: answer, and end the connection.
            resp = _text(405, "CONNECT must be the first request on its connection")
            resp.force_close()
            return resp
        try:
            r = route(request.method, request.raw_path, self.registry)
        except BadInput as exc:
            return _text(400, str(exc))
        try:
            if r.blob is not None:
                return await self._blob(request, r)
            return await self._pass(request, r.upstream)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.counters["errors"] += 1
            log.warning("proxy: %s %s: %s", request.method, redact_url(r.upstream), exc)
            return _text(502, f"upstream {redact_url(r.upstream)} failed: "
                              f"{exc.__class__.__name__}: {exc}")

    async def _pass(self, request: web.Request, url: str) -> web.StreamResponse:
        """Send the request upstream as it is and stream the answer back."""
        self.counters["passed"] += 1
        headers = upstream_request_headers(request.headers.items())
        body = request.content if request.body_exists else None
        async with self._session.request(request.method, url, headers=headers, data=body,
                                         allow_redirects=False) as up:
            resp = web.StreamResponse(status=up.status, reason=up.reason,
                                      headers=CIMultiDict(client_response_headers(
                                          up.headers.items())))
            await resp.prepare(request)
            if request.method == "HEAD" or up.status in (204, 304) or up.status < 200:
                return resp
            try:
                async for chunk in up.content.iter_chunked(CHUNK):
                    await resp.write(chunk)
                await resp.write_eof()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # The head is out: all a proxy can do now is end the connection,
                # so that the client sees a short body, not a whole one.
                self.counters["errors"] += 1
                log.warning("proxy: %s %s broke mid-body: %s", request.method,
                            redact_url(url), exc)
                resp.force_close()
                if request.transport is not None:
                    request.transport.close()
            return resp

    async def _blob(self, request: web.Request, r: Route) -> web.StreamResponse:
        """A blob through the swarm, once the registry said this client may have it."""
        headers = upstream_request_headers(request.headers.items())
        async with self._session.head(r.upstream, headers=headers, allow_redirects=False) as up:
            allowed = 200 <= up.status < 300 or up.status in REDIRECTS
        if not allowed:
            self.counters["refused_by_upstream"] += 1
            return await self._pass(request, r.upstream)
        out = os.path.join(self.spool, f"{r.blob.hex}.{uuid.uuid4().hex}")
        try:
            done = await self._download(DownloadCommand(
                r.upstream, out, swarm_headers(request.headers.items()), r.blob,
                link=True, progress=False))
        except DamselflyError as exc:
            _unlink(out)
            self.counters["fallbacks"] += 1
            log.warning("proxy: blob %s through the swarm failed (%s); passing the "
                        "request to %s", r.blob, exc, redact_url(r.upstream))
            return await self._pass(request, r.upstream)
        except BaseException:
            _unlink(out)
            raise
        self.counters["blobs"] += 1
        self.counters["blob_bytes"] += int(done.get("length") or 0)
        return _SpooledFile(out, chunk_size=CHUNK, headers={
            "Docker-Content-Digest": str(r.blob), "Content-Type": "application/octet-stream"})

    async def _download(self, command: DownloadCommand) -> dict:
        """Run ``command`` on this host's daemon; its ``done`` event, or the error it sent."""
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        except OSError as exc:
            raise BrokenByPeer(f"cannot reach dfdaemon at {self.socket_path}: {exc}") from exc
        channel = Channel(reader, writer)
        try:
            await channel.send(command.to_wire())
            while (event := await channel.receive()) is not None:
                if event.get("event") == "done":
                    return event
                if event.get("event") == "error":
                    raise error_from_event(event)
        except (ConnectionError, OSError) as exc:
            raise BrokenByPeer(f"dfdaemon connection broke: {exc}") from exc
        finally:
            await channel.aclose()
        raise BrokenByPeer("dfdaemon closed the connection before the download ended")


class _SpooledFile(web.FileResponse):
    """A file sent with sendfile (Range handled by aiohttp), whose link is
    removed once it was sent, or once sending failed."""

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.spooled = path

    async def prepare(self, request):
        try:
            return await super().prepare(request)
        finally:
            _unlink(self.spooled)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=message + "\n")
