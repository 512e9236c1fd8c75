"""A lean HTTP/1.1 client for the supernode's JSON API: POST, keep-alive, nothing else.

Why not aiohttp's client, which the origin downloads keep using: a dfdaemon
worker makes about one schedule call per piece, and in the lab at N = 20
(20 daemons on 2 cores, CPU-bound) aiohttp's request machinery was about a
sixth of the workers' Python time (py-spy, GIL samples), more than receiving
the pieces. This client does only what the supernode API needs: one POST
with a JSON body, an answer with Content-Length (or chunked, or until
close), connections kept alive and pooled per supernode. With it the lab's
damselfly runs took 10.30 and 10.27 s at N = 20 against 10.51 and 10.31 s
with aiohttp (machine CPU 84/83 % against 87/86 %), and 16.95 and 16.58 s
at N = 40 against 18.26 and 19.11 s (interleaved runs, 5128a81).

Contract of ``RpcClient.post``: it returns ``(status, body)`` for any
complete response, and raises ``OSError`` (refused, reset: the
``ConnectionError`` family), ``TimeoutError`` (``timeout`` covers connecting,
sending and the whole answer) or ``BadAnswer`` (not HTTP/1.x, or too large)
otherwise; ``engine.download.supernodes.call`` turns those into
``Unreachable``. A pooled connection that the supernode closed while it sat
idle fails before any byte of the answer: that one case is sent again once on
a fresh connection (the supernode closed it, so it never saw the request).

One event loop owns a client; ``close`` drops the idle connections.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from urllib.parse import unquote, urlsplit

from engine.errors import SupernodeError

MAX_IDLE_PER_NODE = 4
MAX_BODY = 16 << 20         # a schedule answer is a few KiB
MAX_HEAD = 64 << 10


class BadAnswer(SupernodeError):
    """The supernode's answer is not the HTTP/1.x this client understands."""


class _Endpoint:
    __slots__ = ("host", "port", "tls", "prefix", "authority", "auth")

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadAnswer(f"not an http(s) URL: {base[:100]!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        try:
            self.port = parts.port or (443 if self.tls else 80)
        except ValueError as exc:
            raise BadAnswer(f"bad port in {base[:100]!r}") from exc
        self.prefix = parts.path.rstrip("/")
        self.authority = parts.netloc.rpartition("@")[2]
        if not (self.authority + self.prefix).isascii():
            raise BadAnswer(f"non-ASCII supernode URL {base[:100]!r}")
        self.auth = ""                      # user:password in the URL, as aiohttp sent it
        if parts.username is not None:
            user = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.auth = (f"Authorization: Basic "
                         f"{base64.b64encode(user.encode()).decode()}\r\n")


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def close(self) -> None:
        self.writer.close()


class RpcClient:
    """Keep-alive POSTs to the supernodes (see the module docstring)."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_NODE) -> None:
        self.max_idle = max_idle
        self._endpoints: dict[str, _Endpoint] = {}
        self._idle: dict[str, list[_Conn]] = {}
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def post(self, base: str, path: str, body: bytes,
                   timeout: float) -> tuple[int, bytes]:
        """POST ``body`` (JSON) to ``base + path``; the status and the body."""
        ep = self._endpoints.get(base)
        if ep is None:
            ep = self._endpoints[base] = _Endpoint(base)
        request = (f"POST {ep.prefix}{path} HTTP/1.1\r\nHost: {ep.authority}\r\n{ep.auth}"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                   f"\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout):
            idle = self._idle.get(base)
            conn = idle.pop() if idle else None
            if conn is not None:
                try:
                    status, data, keep = await _exchange(conn, request)
                except _Truncated:
                    conn.close()
                    raise
                except (ConnectionError, _Closed):
                    conn.close()        # closed while idle: the request never got there
                    conn = None
                except BaseException:
                    conn.close()
                    raise
            if conn is None:
                conn = await self._connect(ep)
                try:
                    status, data, keep = await _exchange(conn, request)
                except _Closed as exc:
                    conn.close()
                    raise ConnectionResetError("the supernode closed the connection") from exc
                except BaseException:
                    conn.close()
                    raise
        if keep and not self._closed:
            pool = self._idle.setdefault(base, [])
            if len(pool) < self.max_idle:
                pool.append(conn)
                return status, data
        conn.close()
        return status, data

    def close(self) -> None:
        """Close the idle connections; a call still running closes its own."""
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def _connect(self, ep: _Endpoint) -> _Conn:
        tls = None
        if ep.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        reader, writer = await asyncio.open_connection(
            ep.host, ep.port, ssl=tls, server_hostname=ep.host if tls else None,
            limit=MAX_HEAD)
        return _Conn(reader, writer)


class _Closed(Exception):
    """The connection ended before the first byte of the answer."""


class _Truncated(ConnectionResetError):
    """The connection ended inside the answer: the request may have been handled."""


async def _exchange(conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
    conn.writer.write(request)
    await conn.writer.drain()
    reader = conn.reader
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed() from exc
        raise _Truncated("the supernode closed the connection mid-answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadAnswer("the answer's head is too large") from exc
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise BadAnswer(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
    status = int(code)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadAnswer(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    try:
        if status < 200:
            raise BadAnswer(f"unexpected interim answer {status}")   # we never ask for one
        if status in (204, 304):
            return status, b"", keep
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, await _chunked(reader), keep
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > MAX_BODY:
                raise BadAnswer(f"bad Content-Length {length[:40]!r}")
            return status, await reader.readexactly(int(length)), keep
        data = bytearray()                          # until the supernode closes
        while chunk := await reader.read(1 << 16):
            data += chunk
            if len(data) > MAX_BODY:
                raise BadAnswer("the answer is too large")
        return status, bytes(data), False
    except asyncio.IncompleteReadError as exc:
        raise _Truncated("the supernode closed the connection mid-answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise BadAnswer("a chunk-size line is too long") from exc


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line[:-2].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise BadAnswer(f"bad chunk size {size_text[:20]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass                                # trailers, ignored
            return bytes(body)
        if len(body) + size > MAX_BODY:
            raise BadAnswer("the answer is too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise BadAnswer("a chunk does not end with CRLF")
