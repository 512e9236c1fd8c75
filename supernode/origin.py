"""The origin side of the CDN: one aiohttp client session, requests and their mapping.

Everything aiohttp raises is mapped here into ``OriginError`` (with the HTTP
status when there is one) or ``BrokenByPeer`` (the connection broke: worth a
resume), so the CDN above never sees an aiohttp exception.

What must stay true:

- Bytes are stored exactly as the origin sent them: the session never
  decompresses and asks for ``Accept-Encoding: identity``, so Content-Length
  and Content-Range count the same bytes we store.
- The peer's headers (Authorization, Cookie, custom ones) go to the origin and
  nowhere else: no cookie jar (cookies an origin sets for one peer must not
  reach another peer's requests), and no header or query string is logged;
  URLs in messages go through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from engine.errors import BrokenByPeer, OriginError
from engine.meta import redact_url

# Headers a peer may not choose: hop-by-hop ones, and the ones the CDN sets
# itself to control what comes back (encoding, ranges, validators).
_NOT_FORWARDED = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE",
    "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Expect",
    "Accept-Encoding", "Range", "If-Range", "If-None-Match", "If-Modified-Since",
    "If-Match", "If-Unmodified-Since",
))
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)\Z")


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies one version of the origin's content."""

    etag: str | None = None
    last_modified: str | None = None

    @property
    def if_range(self) -> str | None:
        # If-Range takes a strong ETag or a date; a weak ETag is not allowed.
        if self.etag and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def conditional(self) -> dict[str, str]:
        out = {}
        if self.etag:
            out["If-None-Match"] = self.etag
        if self.last_modified:
            out["If-Modified-Since"] = self.last_modified
        return out

    def contradicts(self, other: Validators) -> bool:
        """True when both sides name a validator and they differ."""
        return bool(self.etag and other.etag and self.etag != other.etag or
                    self.last_modified and other.last_modified and
                    self.last_modified != other.last_modified)


@dataclass(frozen=True, slots=True)
class Head:
    """The parts of a response head the CDN acts on."""

    status: int
    length: int | None              # bytes in this response's body, if announced
    validators: Validators
    range_start: int | None = None  # for 206: first byte and the total length
    range_total: int | None = None


class OriginClient:
    """One aiohttp session for every back-to-source request of the process.

    Not thread-safe; the event loop is the only user. Counts requests and
    bytes for /metrics.
    """

    def __init__(self, connect_timeout: float, read_timeout: float,
                 max_redirects: int = 10) -> None:
        self._timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                              sock_connect=connect_timeout,
                                              sock_read=read_timeout)
        self._max_redirects = max_redirects
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.bytes = 0

    async def __aenter__(self) -> OriginClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            connector=aiohttp.TCPConnector(limit=64))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, url: str, headers: Mapping[str, str], *, start: int = 0,
                  if_range: str | None = None,
                  conditional: Validators | None = None) -> Response:
        """Send one GET; the caller must close the returned Response.

        ``start`` > 0 asks for ``bytes=start-``. ``conditional`` makes it a
        revalidation (304 is then a valid answer). Any status other than
        200/206/304 raises OriginError carrying it.
        """
        assert self._session is not None, "OriginClient used outside its context"
        out = {k: v for k, v in headers.items() if k.lower() not in _NOT_FORWARDED}
        out["Accept-Encoding"] = "identity"
        if start:
            out["Range"] = f"bytes={start}-"
            if if_range:
                out["If-Range"] = if_range
        if conditional is not None:
            out.update(conditional.conditional())
        self.requests += 1
        try:
            resp = await self._session.get(url, headers=out,
                                           max_redirects=self._max_redirects)
        except aiohttp.TooManyRedirects as exc:
            raise OriginError(f"too many redirects from {redact_url(url)}") from exc
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            raise BrokenByPeer(f"cannot reach origin {redact_url(url)}: "
                               f"{type(exc).__name__}") from exc
        except aiohttp.ClientError as exc:
            raise OriginError(f"request to {redact_url(url)} failed: "
                              f"{type(exc).__name__}") from exc
        ok = resp.status in (200, 206) or resp.status == 304 and conditional is not None
        if not ok:
            reason = resp.reason or ""
            resp.release()
            raise OriginError(f"origin answered {resp.status} {reason} for "
                              f"{redact_url(url)}".rstrip(), status=resp.status)
        return Response(self, resp, url)


class Response:
    """An open origin response: its head, then its body in chunks."""

    def __init__(self, client: OriginClient, resp: aiohttp.ClientResponse, url: str) -> None:
        self._client, self._resp, self.url = client, resp, url
        self.head = _head(resp)

    async def read(self) -> bytes:
        """The next body chunk as it arrives, b"" at the end of the body.

        A body that breaks off (fewer bytes than Content-Length, a chunked
        body without its last chunk, a read timeout) raises BrokenByPeer.
        """
        try:
            chunk = await self._resp.content.readany()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError,
                asyncio.TimeoutError) as exc:
            raise BrokenByPeer(f"origin connection broke: {type(exc).__name__}") from exc
        self._client.bytes += len(chunk)
        return chunk

    def close(self) -> None:
        # close(), not release(): a half-read body cannot go back to the pool.
        self._resp.close()


def _head(resp: aiohttp.ClientResponse) -> Head:
    validators = Validators(resp.headers.get("ETag"), resp.headers.get("Last-Modified"))
    length = _int_or_none(resp.headers.get("Content-Length"))
    start = total = None
    if resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
        if m:
            start = int(m.group(1))
            total = int(m.group(3)) if m.group(3) != "*" else None
    return Head(resp.status, length, validators, start, total)


def _int_or_none(text: str | None) -> int | None:
    if text is None or not text.strip().isdigit():
        return None
    return int(text)
