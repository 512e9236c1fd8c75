"""A small OCI registry with token auth, for the registry mirror tests.

It behaves as Docker Hub does where the mirror must get things right:

- ``/v2/`` and everything under it answer 401 with a ``WWW-Authenticate:
  Bearer realm=...,service=...`` challenge unless the request carries a
  token the auth service issued;
- the auth service (``/token``) hands out tokens, one per call, and counts
  the calls;
- a manifest is served only to a client whose ``Accept`` names its media
  type (406 otherwise), so a mirror that drops headers fails;
- a blob GET is redirected (307) to a storage URL with no auth, as S3-backed
  registries do; ``GET`` and ``HEAD`` of each blob are counted;
- ``/echo`` tells what request body arrived, ``/broken`` breaks off mid-body.

It runs on its own event loop in a background thread, on 127.0.0.1, so the
test's own code can call it with blocking clients.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import threading
from collections import Counter

from aiohttp import web

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
REALM_SERVICE = "fake-registry"


class FakeRegistry:
    def __init__(self, repo: str, blobs: list[bytes]) -> None:
        self.repo = repo
        self.blobs = {f"sha256:{hashlib.sha256(b).hexdigest()}": b for b in blobs}
        digests = list(self.blobs)
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digests[0], "size": len(blobs[0])},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": d, "size": len(self.blobs[d])} for d in digests[1:]],
        }).encode()
        self.manifest_digest = f"sha256:{hashlib.sha256(self.manifest).hexdigest()}"
        self.tokens: set[str] = set()
        self.token_calls = 0
        self.gets: Counter[str] = Counter()      # blob digest -> GETs at /v2/
        self.heads: Counter[str] = Counter()
        self.storage_gets: Counter[str] = Counter()
        self.seen_headers: list[dict[str, str]] = []
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------

    def __enter__(self) -> FakeRegistry:
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(started),),
                                        daemon=True)
        self._thread.start()
        started.result(timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    async def _serve(self, started: concurrent.futures.Future) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/token", self._token)
        app.router.add_get("/storage/{digest}", self._storage)
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_get("/broken", self._broken)
        app.router.add_route("*", "/v2/{tail:.*}", self._v2)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        try:
            await site.start()
            self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            started.set_result(None)
            await self._stop.wait()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            await runner.cleanup()

    # --- handlers ---------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        self.token_calls += 1
        token = f"tok-{self.token_calls}"
        self.tokens.add(token)
        return web.json_response({"token": token, "access_token": token})

    def _challenge(self) -> web.Response:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
            status=401, headers={"WWW-Authenticate": f'Bearer realm="{self.url}/token",'
                                                     f'service="{REALM_SERVICE}"'})

    async def _v2(self, request: web.Request) -> web.StreamResponse:
        self.seen_headers.append(dict(request.headers))
        auth = request.headers.get("Authorization", "")
        if not (auth.startswith("Bearer ") and auth[7:] in self.tokens):
            return self._challenge()
        tail = request.match_info["tail"]
        if tail == "":
            return web.json_response({})
        prefix = f"{self.repo}/"
        if not tail.startswith(prefix):
            return web.json_response({"errors": [{"code": "NAME_UNKNOWN"}]}, status=404)
        kind, _, ref = tail[len(prefix):].partition("/")
        if kind == "manifests" and ref in ("1", self.manifest_digest):
            if MANIFEST_TYPE not in request.headers.get("Accept", ""):
                return web.Response(status=406, text="no acceptable manifest type")
            return web.Response(body=self.manifest, content_type=MANIFEST_TYPE,
                                headers={"Docker-Content-Digest": self.manifest_digest})
        if kind == "blobs" and ref in self.blobs:
            if request.method == "HEAD":
                self.heads[ref] += 1
                return web.Response(headers={"Content-Length": str(len(self.blobs[ref])),
                                             "Docker-Content-Digest": ref})
            self.gets[ref] += 1
            raise web.HTTPTemporaryRedirect(f"{self.url}/storage/{ref}")
        return web.json_response({"errors": [{"code": "BLOB_UNKNOWN"}]}, status=404)

    async def _echo(self, request: web.Request) -> web.Response:
        """What arrived: method, the body's sha256 and length, and how it was framed."""
        body = await request.read()
        return web.json_response({
            "method": request.method, "sha256": hashlib.sha256(body).hexdigest(),
            "length": len(body), "content_length": request.headers.get("Content-Length"),
            "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})

    async def _broken(self, request: web.Request) -> web.StreamResponse:
        """Promises 1 MiB, sends 1000 bytes, and hangs up."""
        resp = web.StreamResponse(headers={"Content-Length": str(1 << 20)})
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        request.transport.close()
        return resp

    async def _storage(self, request: web.Request) -> web.Response:
        digest = request.match_info["digest"]
        if digest not in self.blobs:
            raise web.HTTPNotFound()
        self.storage_gets[digest] += 1
        return web.Response(body=self.blobs[digest], content_type="application/octet-stream")
