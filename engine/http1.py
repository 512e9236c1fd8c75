"""A sans-IO HTTP/1.1 request parser and response-head builder for the upload server.

No sockets here (h11's rule): ``RequestParser.feed(bytes)`` returns the
requests completed so far, however the bytes were split; ``response_head``
returns the bytes to send. The upload server only ever answers GET without a
body, so a request with a body is refused rather than half-parsed.

Limits are deliberate: a request head over 8 KiB, a line without CRLF, a
header without a colon, or a Content-Length/Transfer-Encoding on a GET is a
ProtocolError, and the server answers 400 and closes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import BadInput

MAX_HEAD = 8192
REASONS = {200: "OK", 206: "Partial Content", 400: "Bad Request", 404: "Not Found",
           405: "Method Not Allowed", 416: "Range Not Satisfiable",
           431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)\Z")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


class ProtocolError(BadInput):
    """The peer sent something that is not a request we accept."""

    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return conn != "close" if self.version == "HTTP/1.1" else conn == "keep-alive"


class RequestParser:
    """Feed bytes, get whole requests. Not thread-safe; one connection each."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Request]:
        self._buf += data
        out = []
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ProtocolError("request head too large", 431)
                return out
            if end > MAX_HEAD:
                raise ProtocolError("request head too large", 431)
            head = bytes(self._buf[:end])
            del self._buf[:end + 4]
            out.append(_parse_head(head))

    @property
    def pending(self) -> int:
        return len(self._buf)


def _parse_head(head: bytes) -> Request:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError("request head is not ASCII") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0") or not _TOKEN.match(parts[0]):
        raise ProtocolError(f"bad request line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise ProtocolError(f"bad header line {line[:80]!r}")
        headers[name.lower()] = value.strip(" \t")
    if "transfer-encoding" in headers or headers.get("content-length", "0") != "0":
        raise ProtocolError("request bodies are not accepted")
    return Request(parts[0], parts[1], parts[2], headers)


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` a Range header asks for within ``size`` bytes.

    None means the whole thing. Raises ProtocolError(416) for a range outside
    the piece, and for multiple ranges, which no peer of ours sends.
    """
    if value is None:
        return None
    m = _RANGE.match(value.strip())
    if not m or not (m.group(1) or m.group(2)):
        raise ProtocolError(f"unsupported range {value[:60]!r}", 416)
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
    else:
        start, end = max(size - int(last), 0), size
    if start >= end or start >= size:
        raise ProtocolError(f"range {value[:60]!r} outside {size} bytes", 416)
    return start, end


def response_head(status: int, length: int, headers: dict[str, str] | None = None,
                  keep_alive: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}",
             f"Content-Length: {length}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
