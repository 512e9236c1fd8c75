"""The local API between dfget and dfdaemon: NDJSON over a unix socket.

Framing: every message is one JSON object on one line (``\\n`` ends it;
JSON text never contains a raw newline). The same framing carries the
coordinator <-> worker channel. This module is sans-IO (h11's rule):
``LineDecoder.feed(bytes)`` returns the complete messages so far however
the bytes were split, ``encode(obj)`` returns the bytes to send. The thin
asyncio adapter at the bottom only moves bytes.

A conversation is one request line from the client, then events until the
daemon closes the connection::

    -> {"op": "download", "url": ..., "output": "/abs/path", "headers": {...},
        "digest": "sha256:..." | null, "tag": "", "filter": [...],
        "limit": bytes/s | null, "back_source": true, "timeout": s | null,
        "link": false, "copy": false, "progress": true}
    <- {"event": "accepted", "task_id": ...}
    <- {"event": "progress", "completed": n, "total": n | null, ...}   (any number;
                                                          none with "progress": false)
    <- {"event": "done", "sha256": ..., "length": n, "from_peers": n,
        "from_cdn": n, "from_origin": n, "seconds": s, ...}
     | {"event": "error", "message": ..., "exit_code": n, "kind": "OriginError"}

    -> {"op": "stats"}       <- {"event": "stats", ...counters}

The output path is absolute: dfget resolves it against its own working
directory; the daemon runs as the same user and writes it (atomically).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from engine import errors
from engine.errors import BadInput, BrokenByPeer, DamselflyError
from engine.types import Digest

if TYPE_CHECKING:  # dfget never imports asyncio: 20 ms of every invocation
    import asyncio

MAX_LINE = 1 << 20
EVENTS = ("accepted", "progress", "done", "error", "stats")


def encode(message: dict) -> bytes:
    """One message as one NDJSON line."""
    return orjson.dumps(message) + b"\n"


class LineDecoder:
    """Feed bytes, get whole JSON objects. One per connection; not thread-safe."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        self._buf += data
        out = []
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end])
            del self._buf[:end + 1]
            if line.strip():
                out.append(_parse(line))
        if len(self._buf) > self.max_line:
            raise BadInput(f"local API line longer than {self.max_line} bytes")
        return out

    def close(self) -> None:
        """The stream ended: a half line means the other side broke off mid-message."""
        if self._buf.strip():
            raise BrokenByPeer("local API stream ended inside a message")


def _parse(line: bytes) -> dict:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"local API line is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadInput("local API message must be a JSON object")
    return value


def _field(o: dict, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = o.get(name, default)
    if value is default:
        return value
    bad_bool = isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,))
    if bad_bool or not isinstance(value, kind):
        raise BadInput(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


@dataclass(frozen=True, slots=True)
class DownloadCommand:
    """What dfget asks for; validated when built."""

    url: str
    output: str
    headers: dict[str, str] = field(default_factory=dict)
    digest: Digest | None = None
    tag: str = ""
    filter_params: tuple[str, ...] = ()
    limit: int | None = None
    back_source: bool = True
    timeout: float | None = None
    # The output: a hard link to the cache where the filesystem allows, else a
    # copy (neither set); a link or an error (``link``); a copy (``copy``).
    link: bool = False
    progress: bool = True  # send progress events (a client that shows none says False)
    copy: bool = False

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise BadInput(f"url must be http(s), got {self.url[:80]!r}")
        if not os.path.isabs(self.output) or "\0" in self.output:
            raise BadInput("output must be an absolute path")
        for name, value in self.headers.items():
            if not name or any(c in name + value for c in "\r\n\0") or ":" in name:
                raise BadInput(f"bad header {name!r}")
        if self.limit is not None and self.limit <= 0:
            raise BadInput("limit must be > 0 bytes/s")
        if self.timeout is not None and self.timeout <= 0:
            raise BadInput("timeout must be > 0 seconds")
        if self.link and self.copy:
            raise BadInput("link and copy exclude each other")

    @classmethod
    def from_wire(cls, o: dict) -> DownloadCommand:
        url, output = o.get("url"), o.get("output")
        if not isinstance(url, str) or not isinstance(output, str):
            raise BadInput("download needs string fields 'url' and 'output'")
        headers = _field(o, "headers", dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise BadInput("field 'headers' must map strings to strings")
        filt = _field(o, "filter", list, [])
        if not all(isinstance(p, str) for p in filt):
            raise BadInput("field 'filter' must be a list of strings")
        digest = _field(o, "digest", str, None)
        timeout = _field(o, "timeout", (int, float), None)
        return cls(url, output, headers, Digest.parse(digest) if digest else None,
                   _field(o, "tag", str, ""), tuple(filt), _field(o, "limit", int, None),
                   _field(o, "back_source", bool, True),
                   float(timeout) if timeout is not None else None,
                   _field(o, "link", bool, False), _field(o, "progress", bool, True),
                   _field(o, "copy", bool, False))

    def to_wire(self) -> dict:
        return {"op": "download", "url": self.url, "output": self.output,
                "headers": self.headers, "digest": str(self.digest) if self.digest else None,
                "tag": self.tag, "filter": list(self.filter_params), "limit": self.limit,
                "back_source": self.back_source, "timeout": self.timeout, "link": self.link,
                "copy": self.copy, "progress": self.progress}


def parse_command(o: dict) -> DownloadCommand | str:
    """A request line: a DownloadCommand, or the name of a bare op ("stats")."""
    op = o.get("op")
    if op == "download":
        return DownloadCommand.from_wire(o)
    if op == "stats":
        return "stats"
    raise BadInput(f"unknown local API op {op!r}")


def error_event(exc: BaseException) -> dict:
    """The error event for ``exc``; a foreign exception is an internal error (exit 1)."""
    if isinstance(exc, DamselflyError):
        return {"event": "error", "message": str(exc), "exit_code": exc.exit_code,
                "kind": type(exc).__name__}
    return {"event": "error", "message": f"internal error: {type(exc).__name__}: {exc}",
            "exit_code": 1, "kind": "DamselflyError"}


def error_from_event(event: dict) -> DamselflyError:
    """Rebuild the error an error event names: same class, message and exit code.

    The class is looked up by name in engine.errors only (never imported by
    name from elsewhere); extra fields such as an OriginError's status do not
    travel, only what ``str()`` and ``exit_code`` show.
    """
    kind = event.get("kind")
    cls = getattr(errors, kind, None) if isinstance(kind, str) else None
    if not (isinstance(cls, type) and issubclass(cls, DamselflyError)):
        cls = DamselflyError
    exc = cls.__new__(cls)
    Exception.__init__(exc, str(event.get("message", "unknown error")))
    code = event.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and code != cls.exit_code:
        exc.exit_code = code
    return exc


# --- asyncio adapter --------------------------------------------------------------


class Channel:
    """NDJSON messages over an asyncio stream pair (unix socket or socketpair)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._decoder = LineDecoder()
        self._pending: list[dict] = []

    async def receive(self) -> dict | None:
        """The next message, or None at a clean end of stream."""
        while not self._pending:
            data = await self.reader.read(65536)
            if not data:
                self._decoder.close()
                return None
            self._pending.extend(self._decoder.feed(data))
        return self._pending.pop(0)

    async def send(self, message: dict) -> None:
        self.writer.write(encode(message))
        await self.writer.drain()

    def send_nowait(self, message: dict) -> None:
        """Queue a message without waiting for the buffer to drain (small control lines)."""
        if not self.writer.is_closing():
            self.writer.write(encode(message))

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, BrokenPipeError):
            pass
