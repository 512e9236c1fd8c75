"""A sans-IO receiver for one peer's answer to ``GET /pieces/<task>/<n>``.

No sockets here. The receiver follows the buffer protocol of
``asyncio.BufferedProtocol`` turned inside out: ``get_buffer()`` says where
the next received bytes must go, ``received(n)`` says that ``n`` of them
went there. That lets the transport adapter (engine.download.fetch) hand the
kernel the body's final place as the receive buffer: a slice of the mmapped
task file, so the body is copied once, from the socket into the page cache,
or a small bounce buffer written out with pwrite (engine.download.sinks).

Theory of operation::

    head ──(200, Content-Length == piece size)──► body ──► done
      │ ──(404/503/other, Content-Length: n)────► drain ─► done
      └──(anything malformed)─────────────────► ProtocolError

The head goes into a small private buffer. The kernel may deliver the head
and the start of the body in one segment; the body bytes that landed in the
head buffer are copied to the sink (a few hundred bytes at most) and the
rest of the body goes straight to the sink's buffer. ``get_buffer`` never offers
more room than the response can still use, except while the head is being
read: bytes past the end of a response are a protocol error (we never
pipeline), and they make the connection unfit for reuse.

Not thread-safe; one receiver per request, driven by one protocol.
"""

from __future__ import annotations

from engine.download.sinks import FileSink, MemorySink
from engine.errors import PeerError

Sink = MemorySink | FileSink

HEAD_CHUNK = 1024
MAX_HEAD = 16384
MAX_ERROR_BODY = 65536
_DRAIN_CHUNK = 4096


class ProtocolError(PeerError):
    """The peer's response is not one we accept; the connection is unusable."""


class PieceResponse:
    """Receives one HTTP/1.1 response; a 200 body goes to ``sink``.

    ``sink`` is an engine.download.sinks sink exactly as long as the piece,
    or a writable buffer (the mmap slice, a bytearray in tests), which is
    wrapped in a MemorySink.
    """

    def __init__(self, sink: Sink | memoryview | bytearray) -> None:
        self._sink = sink if isinstance(sink, (MemorySink, FileSink)) else MemorySink(sink)
        self._length = self._sink.length
        self._head = bytearray(HEAD_CHUNK)
        self._head_len = 0
        self._scratch: bytearray | None = None
        self._offset = 0
        self._remaining = 0
        self.state = "head"
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.keep_alive = True

    @property
    def done(self) -> bool:
        return self.state == "done"

    @property
    def ok(self) -> bool:
        """True when the whole piece was received (status 200)."""
        return self.done and self.status == 200

    @property
    def body_bytes(self) -> int:
        return self._offset

    @property
    def body_left(self) -> int:
        """Body bytes still to come while in the body; 0 otherwise."""
        return self._length - self._offset if self.state == "body" else 0

    @property
    def starved(self) -> bool:
        """True when the sink wants no more bytes for now: stop reading the
        socket and resume once ``on_room`` calls back."""
        return self.state == "body" and self._sink.starved

    def on_room(self, callback) -> None:
        self._sink.on_room(callback)

    def get_buffer(self) -> memoryview:
        """Where the next received bytes go; never empty while not done."""
        if self.state == "head":
            if self._head_len == len(self._head):
                if len(self._head) >= MAX_HEAD:
                    raise ProtocolError("response head too large")
                self._head.extend(bytes(len(self._head)))
            return memoryview(self._head)[self._head_len:]
        if self.state == "body":
            return self._sink.buffer(self._offset)
        if self.state == "drain":
            if self._scratch is None:
                self._scratch = bytearray(_DRAIN_CHUNK)
            return memoryview(self._scratch)[:min(self._remaining, _DRAIN_CHUNK)]
        raise ProtocolError("bytes after the end of the response")

    def received(self, n: int) -> None:
        """``n`` bytes were written into the buffer last returned by get_buffer."""
        if n <= 0:
            return
        if self.state == "head":
            self._head_len += n
            self._try_head()
        elif self.state == "body":
            self._sink.landed(self._offset, n)
            self._offset += n
            if self._offset == self._length:
                self._finish()
        elif self.state == "drain":
            self._remaining -= n
            if self._remaining == 0:
                self._finish()
        else:
            raise ProtocolError("bytes after the end of the response")

    def release(self) -> None:
        """Close the sink (an mmap slice must be released before its mmap
        can be closed)."""
        self._sink.close()

    def _try_head(self) -> None:
        data = self._head
        end = data.find(b"\r\n\r\n", 0, self._head_len)
        if end < 0:
            return
        self._parse_head(bytes(data[:end]))
        extra = memoryview(data)[end + 4:self._head_len]
        try:
            self._absorb(extra)
        finally:
            extra.release()

    def _absorb(self, extra: memoryview) -> None:
        """Move body bytes that arrived with the head to where they belong."""
        if self.state == "body":
            if len(extra) > self._length:
                raise ProtocolError("response body longer than the piece")
            while extra:
                with self._sink.buffer(self._offset) as room:
                    n = min(len(room), len(extra))
                    room[:n] = extra[:n]
                self._sink.landed(self._offset, n)
                self._offset += n
                extra = extra[n:]
            if self._offset == self._length:
                self._finish()
        elif self.state == "drain":
            if len(extra) > self._remaining:
                raise ProtocolError("response body longer than its Content-Length")
            self._remaining -= len(extra)
            if self._remaining == 0:
                self._finish()
        elif len(extra) and self.keep_alive:
            # Dropping the connection anyway (no usable length) makes the rest moot.
            raise ProtocolError("bytes after the end of the response")

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0") or not parts[1].isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ProtocolError(f"bad header line {line[:80]!r}")
            self.headers[name.lower()] = value.strip(" \t")
        conn = self.headers.get("connection", "").lower()
        self.keep_alive = conn != "close" if parts[0] == "HTTP/1.1" else conn == "keep-alive"
        if "transfer-encoding" in self.headers:
            raise ProtocolError("chunked piece responses are not supported")
        length_text = self.headers.get("content-length")
        if length_text is None or not length_text.isdigit():
            if self.status == 200:
                raise ProtocolError("piece response without a valid Content-Length")
            # An error without a length ends at close: take the status, drop the connection.
            self.keep_alive = False
            self._finish()
            return
        length = int(length_text)
        if self.status == 200:
            if length != self._length:
                raise ProtocolError(f"peer sent {length} bytes for a piece of {self._length}")
            self.state = "body"
            if length == 0:
                self._finish()
        elif length > MAX_ERROR_BODY:
            self.keep_alive = False
            self._finish()
        else:
            self.state = "drain"
            self._remaining = length
            if length == 0:
                self._finish()

    def _finish(self) -> None:
        self.state = "done"

