"""Fetching one piece from one peer, straight into the mmapped task file.

``PieceConnection`` is an ``asyncio.BufferedProtocol``: the event loop asks
it for a buffer before each recv, and while a 200 body is arriving the
buffer it hands out is the slice of the task's mmap at the current offset,
or the bounce buffer of a FileSink (engine.download.response decides which
buffer, engine.download.sinks what kind). The kernel therefore copies
socket bytes once, into the page cache, and no bytes object is ever built.

Flow control: a FileSink whose buffers are all on their way to the disk
says so (``starved``); the connection then pauses reading, and the bytes
wait in the socket (TCP slows the sender) until a buffer comes back.

Connections are kept alive and pooled per source address; a connection goes
back to the pool only after a complete response that allowed keep-alive.
A pooled connection the peer has meanwhile closed fails before a single
byte arrives: that one case is retried once on a fresh connection.

What must stay true: once ``PieceConnection.request`` returns or raises, the
transport no longer writes into the sink's buffer (it is finished or
closed), and the sink is closed, which releases its mmap slice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.download.response import PieceResponse, ProtocolError, Sink
from engine.errors import BrokenByPeer, DamselflyError, PeerError
from engine.messages import Assignment
from engine.types import TaskId

log = logging.getLogger(__name__)
MAX_IDLE_PER_ADDR = 8
RECV_LOWAT = 256 << 10  # bytes queued before a body read wakes us


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (host, port); PeerError if malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerError(f"bad peer address {addr[:80]!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class PieceConnection(asyncio.BufferedProtocol):
    """One keep-alive HTTP/1.1 connection to a peer's upload server."""

    def __init__(self, addr: str) -> None:
        self.addr = addr
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._response: PieceResponse | None = None
        self._waiter: asyncio.Future | None = None
        self._spare = bytearray(512)
        self._sock = None
        self._lowat = 1

    # -- asyncio.BufferedProtocol; never raise from these (the loop would log it).

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        try:
            # The transport's own socket object is a stand-in that builds a
            # socket.socket per setsockopt: tune through a duplicate instead.
            self._sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
        except (OSError, AttributeError):
            self._sock = None

    def _set_lowat(self, left: int) -> None:
        """Wake us only when RECV_LOWAT bytes are queued (SO_RCVLOWAT), or
        all the body still owes if that is less; at every byte between
        responses (``left`` 0), so a head is read as soon as it lands.

        A shaped link delivers a body a few segments at a time, and each
        wakeup costs a trip through the event loop and this protocol: in the
        lab at 40 hosts the event loops' Python was a third of the machine.
        Never more than the body still owes (that would wait forever). The
        last stretch of a body waits for all of it too: with the mark at 1
        there, a 1 MiB piece took 13.6 reads on average instead of 5.9 (lab,
        cProfile of the workers), and the workers 0.79 and 0.79 CPU-s each
        instead of 0.74 and 0.76 (20 hosts, interleaved runs). Three
        setsockopt calls per piece.
        """
        value = min(left, RECV_LOWAT) or 1
        if value != self._lowat and self._sock is not None:
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, value)
            except OSError:
                self._drop_sock()   # not a TCP socket we can tune: stop trying
                return
            self._lowat = value

    def _drop_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()   # the duplicate only; the transport keeps its own
            self._sock = None

    def get_buffer(self, sizehint: int) -> memoryview:
        response = self._response
        if response is not None:
            try:
                return response.get_buffer()
            except ProtocolError as exc:
                self._fail(exc)
        # Unsolicited bytes land here and fail the connection in buffer_updated.
        return memoryview(self._spare)

    def buffer_updated(self, nbytes: int) -> None:
        response = self._response
        if response is None:
            self._fail(ProtocolError("unsolicited bytes from the peer"))
            return
        try:
            response.received(nbytes)
        except DamselflyError as exc:  # a malformed response, or our disk (FileSink)
            self._fail(exc)
            return
        if response.done:
            self._response = None
            self._set_lowat(0)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(response)
            return
        self._set_lowat(response.body_left)
        if response.starved and self.transport is not None:
            # The disk is behind: leave the bytes in the socket (TCP slows
            # the sender down) until the sink has a buffer again.
            self.transport.pause_reading()
            response.on_room(self._resume)

    def _resume(self) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self._fail(BrokenByPeer("the peer closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._drop_sock()
        self._response = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(BrokenByPeer(f"connection to {self.addr} lost: {exc}"))

    # -- used by fetch_piece

    async def request(self, head: bytes, sink: Sink) -> PieceResponse:
        """Send ``head`` and receive the response; a 200 body goes to ``sink``.

        The sink is closed when this returns or raises.
        """
        if self.closed or self.transport is None or self._response is not None:
            sink.close()
            raise BrokenByPeer(f"connection to {self.addr} is not usable")
        response = PieceResponse(sink)
        self._response = response
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            self.transport.write(head)
            return await self._waiter
        finally:
            self._waiter = None
            if self._response is response:  # unfinished: cancelled or timed out
                self.close()
            response.release()

    def close(self) -> None:
        self._response = None
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        self._response = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()


class ConnectionPool:
    """Idle keep-alive connections per peer address. One event loop owns it.

    Peers come and go, and an upload server keeps an idle connection open
    for as long as we do: a connection idle for ``max_idle`` seconds is
    closed at the next acquire or release (a lazy sweep, no timer).
    """

    def __init__(self, connect_timeout: float = 5.0, max_idle: float = 30.0) -> None:
        self.connect_timeout, self.max_idle = connect_timeout, max_idle
        self._idle: dict[str, list[tuple[PieceConnection, float]]] = {}
        self._busy: set[PieceConnection] = set()
        self._swept = time.monotonic()
        self.opened = 0

    async def acquire(self, addr: str) -> tuple[PieceConnection, bool]:
        """A connection to ``addr`` and whether it was reused from the pool."""
        self._sweep()
        idle = self._idle.get(addr)
        while idle:
            conn, _ = idle.pop()
            if not conn.closed:
                self._busy.add(conn)
                return conn, True
        host, port = split_addr(addr)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(lambda: PieceConnection(addr), host, port)
        except OSError as exc:
            raise PeerError(f"cannot connect to {addr}: {exc.strerror or exc}") from exc
        self.opened += 1
        self._busy.add(conn)
        return conn, False

    def release(self, conn: PieceConnection, reusable: bool) -> None:
        self._busy.discard(conn)
        idle = self._idle.setdefault(conn.addr, [])
        if reusable and not conn.closed and len(idle) < MAX_IDLE_PER_ADDR:
            idle.append((conn, time.monotonic()))
        else:
            conn.close()
        self._sweep()

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept < min(1.0, self.max_idle):
            return
        self._swept = now
        for addr in list(self._idle):
            kept = []
            for conn, since in self._idle[addr]:
                if conn.closed or now - since >= self.max_idle:
                    conn.close()
                else:
                    kept.append((conn, since))
            if kept:
                self._idle[addr] = kept
            else:
                del self._idle[addr]

    def close(self) -> None:
        for conns in self._idle.values():
            for conn, _ in conns:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()


@dataclass(frozen=True, slots=True)
class Fetched:
    """How one attempt went: ``reason`` is None on success, else a wire reason."""

    reason: str | None
    nbytes: int
    millis: int
    detail: str = ""


def request_head(task_id: TaskId, piece: int, addr: str) -> bytes:
    return (f"GET /pieces/{task_id.hex}/{piece} HTTP/1.1\r\nHost: {addr}\r\n"
            f"User-Agent: damselfly\r\n\r\n").encode("ascii")


async def fetch_piece(pool: ConnectionPool, task_id: TaskId, assignment: Assignment,
                      make_sink: Callable[[], Sink], timeout: float) -> Fetched:
    """Fetch ``assignment.piece`` into a sink from ``make_sink`` (one per attempt:
    a stale pooled connection is retried once); never raises a PeerError.

    The reasons are those of the wire protocol: ``refused`` (503, slots
    full), ``timeout``, ``failed`` (404, a broken connection, a malformed
    response). Verifying the bytes (``corrupt``) is the caller's job.
    """
    started = time.monotonic()
    head = request_head(task_id, assignment.piece, assignment.addr)

    def outcome(reason: str | None, nbytes: int = 0, detail: str = "") -> Fetched:
        return Fetched(reason, nbytes, int((time.monotonic() - started) * 1000), detail)

    try:
        async with asyncio.timeout(timeout):
            for attempt in (0, 1):
                conn, reused = await pool.acquire(assignment.addr)
                try:
                    response = await conn.request(head, make_sink())
                except BrokenByPeer:
                    pool.release(conn, reusable=False)
                    if reused and attempt == 0:
                        continue  # a stale keep-alive connection: once more, fresh
                    raise
                except BaseException:
                    pool.release(conn, reusable=False)
                    raise
                pool.release(conn, reusable=response.keep_alive)
                break
    except TimeoutError:
        return outcome("timeout", detail=f"no piece from {assignment.addr} in {timeout:g}s")
    except PeerError as exc:  # ProtocolError, BrokenByPeer is not a PeerError
        return outcome("failed", detail=str(exc))
    except BrokenByPeer as exc:
        return outcome("failed", detail=str(exc))
    if response.status == 200:
        return outcome(None, response.body_bytes)
    if response.status == 503:
        return outcome("refused", detail=f"{assignment.addr} is busy")
    return outcome("failed", detail=f"{assignment.addr} answered {response.status}")
