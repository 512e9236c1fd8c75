"""A sans-IO HTTP/1.1 request parser and response-head builder for our servers.

No sockets here (h11's rule): ``RequestParser.feed(bytes)`` returns the
requests completed so far, however the bytes were split; ``response_head``
returns the bytes to send. The upload server only ever answers GET without a
body, so by default a request with a body is refused rather than half-parsed;
the supernode's API (``supernode.apiserver``) takes bodies of up to ``max_body``
bytes, framed by Content-Length only.

Limits are deliberate: a request head over 8 KiB, a line without CRLF, a
header without a colon, a body where none is taken, a body over the limit
(413) or a chunked one (411) is a ProtocolError, and the server answers with
its status and closes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import BadInput

MAX_HEAD = 8192
REASONS = {100: "Continue", 200: "OK", 206: "Partial Content", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Content Too Large", 416: "Range Not Satisfiable",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}
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
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        return conn != "close" if self.version == "HTTP/1.1" else conn == "keep-alive"


class RequestParser:
    """Feed bytes, get whole requests. Not thread-safe; one connection each.

    ``max_body`` > 0 takes request bodies of up to that many bytes (with a
    Content-Length); 0 refuses any body.
    """

    def __init__(self, max_body: int = 0) -> None:
        self._buf = bytearray()
        self.max_body = max_body
        self._head: Request | None = None   # parsed, its body still arriving
        self._need = 0
        self.continue_due = False           # the client waits for "100 Continue"

    def feed(self, data: bytes) -> list[Request]:
        self._buf += data
        out = []
        while True:
            if self._head is not None:
                if len(self._buf) < self._need:
                    return out
                head, self._head = self._head, None
                self.continue_due = False
                body = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                out.append(Request(head.method, head.target, head.version, head.headers, body))
                continue
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD:
                    raise ProtocolError("request head too large", 431)
                return out
            if end > MAX_HEAD:
                raise ProtocolError("request head too large", 431)
            head = bytes(self._buf[:end])
            del self._buf[:end + 4]
            request = _parse_head(head, self.max_body)
            length = int(request.headers.get("content-length", "0"))
            if length:
                self._head, self._need = request, length
                self.continue_due = (request.headers.get("expect", "").lower() == "100-continue"
                                     and len(self._buf) < length)
            else:
                out.append(request)

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def begun(self) -> bool:
        """A request has started and is not whole yet (bytes of it, or a head
        waiting for its body)."""
        return bool(self._buf) or self._head is not None


def _parse_head(head: bytes, max_body: int = 0) -> Request:
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
    length = headers.get("content-length", "0")
    if not max_body:
        if "transfer-encoding" in headers or length != "0":
            raise ProtocolError("request bodies are not accepted")
    elif "transfer-encoding" in headers:
        raise ProtocolError("a request body needs a Content-Length", 411)
    elif not length.isdigit():
        raise ProtocolError(f"bad Content-Length {length[:40]!r}")
    elif int(length) > max_body:
        raise ProtocolError(f"request body over {max_body} bytes", 413)
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
