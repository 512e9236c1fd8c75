"""The upload server: serves verified pieces from the piece store with sendfile.

``GET /pieces/<task id>/<n>`` answers 200 with exactly piece n (206 for a
Range inside it), 404 when the piece is not here, 503 + Retry-After when
every upload slot is busy. ``GET /healthz`` answers 200. Nothing else exists.

Why raw sockets and not an asyncio transport: the body goes out with native
sendfile straight from the task's data file to the socket, and waiting for
writability needs ``loop.add_writer`` on the socket, which the loop refuses
for a socket that a transport owns. The request parsing is the sans-IO
``engine.http1`` parser; this module only moves bytes.

What must stay true: a byte goes out only if its piece's bit is set in the
shared bitmap (it was verified); the request path never becomes a
filesystem path (only a TaskId and an int reach the store).

Several worker processes may each run one of these on the same port with
``reuse_port=True``; the kernel spreads connections across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import OrderedDict
from typing import Protocol

import native
from engine import http1
from engine.errors import BadInput, DamselflyError, StoreError
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import TaskId

log = logging.getLogger(__name__)
CHUNK = 1 << 20
# The socket's send buffer (the kernel doubles it for bookkeeping). Autotuned,
# it stays near twice the congestion window, which on a shaped 100 Mbit/s
# link is a few hundred KiB: a 1 MiB chunk then takes many "writable" turns
# of the event loop, each a future, two epoll_ctl calls and a coroutine
# resume. A buffer that holds a whole chunk lets one sendfile hand it over.
SEND_BUFFER = 1 << 20
OPEN_TASKS = 64
# A connection with no request for this long is closed. Downloaders drop
# their own idle connections sooner (engine.download.fetch: 30 s); this is
# for the ones that vanish without closing.
IDLE_TIMEOUT = 60.0
# A request begun must be whole within this (a GET is one small packet): a
# client that trickles header bytes would otherwise never be idle.
REQUEST_TIMEOUT = 10.0
# A send whose socket takes no byte for this long ends the connection and
# frees the upload slot: a downloader that stopped reading must not hold it.
SEND_STALL = 30.0


class Pacer(Protocol):
    """Anything that can hold a sender back until ``nbytes`` may go out."""

    async def acquire(self, nbytes: int) -> None: ...


class UploadServer:
    """Serve pieces of ``store`` on ``host:port``; use as an async context manager."""

    def __init__(self, store: PieceStore, host: str = "127.0.0.1", port: int = 0, *,
                 slots: int = 16, pacer: Pacer | None = None, reuse_port: bool = False) -> None:
        self.store, self.host, self.slots, self.pacer = store, host, slots, pacer
        self._want_port, self._reuse_port = port, reuse_port
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task | None = None
        self._conns: set[asyncio.Task] = set()
        self._tasks: OrderedDict[TaskId, TaskFile] = OrderedDict()
        # Open files being sent from, and how many sends each: a file that
        # is forgotten or evicted meanwhile is closed by its last sender, so
        # that its descriptor number cannot be reused under a sendfile.
        self._sending: dict[TaskFile, int] = {}
        self._retired: set[TaskFile] = set()
        self._busy = 0
        self.stats = {"pieces": 0, "bytes": 0, "not_found": 0, "busy": 0, "errors": 0}

    @property
    def port(self) -> int:
        assert self._sock is not None, "server not started"
        return self._sock.getsockname()[1]

    async def __aenter__(self) -> UploadServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.host, self._want_port))
            sock.listen(512)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_loop())

    async def close(self) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
        for task_file in [*self._tasks.values(), *self._retired]:
            task_file.close()
        self._tasks.clear()
        self._retired.clear()
        self._sending.clear()

    def forget(self, task_id: TaskId) -> None:
        """Drop a cached open task (it was removed or replaced)."""
        task_file = self._tasks.pop(task_id, None)
        if task_file is not None:
            self._retire(task_file)

    def _retire(self, task_file: TaskFile) -> None:
        """Close ``task_file`` now, or when its last send ends."""
        if task_file in self._sending:
            self._retired.add(task_file)
        else:
            task_file.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._sock)
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            task = asyncio.create_task(self._serve(conn))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        parser = http1.RequestParser()
        try:
            due = 0.0  # when the request begun must be whole (0: none begun)
            while True:
                # An idle connection, or one whose request is late, is shut
                # down, which ends the recv with b"" (one timer per read).
                wait = IDLE_TIMEOUT if not due else max(due - loop.time(), 0.0)
                timer = loop.call_later(wait, _shut, conn)
                try:
                    data = await loop.sock_recv(conn, 65536)
                finally:
                    timer.cancel()
                if not data:
                    return
                try:
                    requests = parser.feed(data)
                except http1.ProtocolError as exc:
                    await self._reply(conn, exc.status, str(exc).encode(), keep_alive=False)
                    return
                for request in requests:
                    if not await self._answer(conn, request) or not request.keep_alive:
                        return
                if requests or not parser.begun:
                    due = 0.0
                if parser.begun and not due:
                    due = loop.time() + REQUEST_TIMEOUT
        except (ConnectionError, TimeoutError):
            pass  # the peer went away; nothing to clean but the socket
        except DamselflyError as exc:
            self.stats["errors"] += 1
            log.warning("upload connection ended: %s", exc)
        finally:
            conn.close()

    async def _answer(self, conn: socket.socket, request: http1.Request) -> bool:
        """Answer one request; False when the connection must close."""
        if request.method != "GET":
            await self._reply(conn, 405, b"only GET\n")
            return True
        path = request.target.split("?", 1)[0]
        if path == "/healthz":
            await self._reply(conn, 200, b"ok\n")
            return True
        parts = path.split("/")
        if len(parts) != 4 or parts[1] != "pieces" or not parts[3].isdigit():
            await self._reply(conn, 404, b"no such resource\n")
            return True
        try:
            task_id, index = TaskId(parts[2]), int(parts[3])
        except BadInput:
            await self._reply(conn, 404, b"no such task\n")
            return True
        task = self._task(task_id)
        if task is None or not task.has(index):
            self.stats["not_found"] += 1
            await self._reply(conn, 404, b"piece not here\n")
            return True
        if self._busy >= self.slots:
            self.stats["busy"] += 1
            await self._reply(conn, 503, b"upload slots full\n", {"Retry-After": "1"})
            return True
        piece = task.layout.range(index)
        try:
            span = http1.parse_range(request.headers.get("range"), piece.length)
        except http1.ProtocolError as exc:
            await self._reply(conn, exc.status, str(exc).encode(),
                              {"Content-Range": f"bytes */{piece.length}"})
            return True
        start, end = span or (0, piece.length)
        headers = {"Content-Type": "application/octet-stream"}
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{piece.length}"
        self._busy += 1
        self._sending[task] = self._sending.get(task, 0) + 1
        try:
            # Pieces reach the store with O_DIRECT (engine.download.sinks), so
            # they are usually on the disk only: start reading the whole range
            # now, in large requests, rather than a readahead window at a time
            # inside sendfile, which blocks this loop while the disk answers.
            with contextlib.suppress(OSError):
                native.fadvise(task.fd, piece.start + start, end - start, native.Advice.WILLNEED)
            head = http1.response_head(206 if span else 200, end - start, headers)
            await _sendall(conn, head)
            await self._send_file(conn, task.fd, piece.start + start, end - start)
        finally:
            self._busy -= 1
            left = self._sending.pop(task, 1) - 1
            if left:
                self._sending[task] = left
            elif task in self._retired:
                self._retired.discard(task)
                task.close()
        self.stats["pieces"] += 1
        self.stats["bytes"] += end - start
        return True

    async def _send_file(self, conn: socket.socket, fd: int, offset: int, count: int) -> None:
        loop = asyncio.get_running_loop()
        out = conn.fileno()
        while count:
            chunk = min(count, CHUNK)
            if self.pacer is not None:
                await self.pacer.acquire(chunk)
            waited = False
            while chunk:
                sent = native.sendfile(out, fd, offset, chunk)
                if sent == 0:
                    # 0 means "socket full" or "end of file"; after the socket
                    # said it was writable only the second is left.
                    if waited:
                        raise StoreError("task data ended before the piece did")
                    await _writable(loop, out)
                    waited = True
                    continue
                waited = False
                offset, count, chunk = offset + sent, count - sent, chunk - sent

    async def _reply(self, conn: socket.socket, status: int, body: bytes,
                     headers: dict[str, str] | None = None, keep_alive: bool = True) -> None:
        head = http1.response_head(status, len(body), headers, keep_alive)
        await _sendall(conn, head + body)

    def _task(self, task_id: TaskId) -> TaskFile | None:
        task = self._tasks.get(task_id)
        if task is not None and task.changed_since_complete():
            # Written after it completed (a hard-linked output edited in
            # place): not one more byte of it goes out.
            self.forget(task_id)
            return None
        if task is not None:
            self._tasks.move_to_end(task_id)
            return task
        try:
            task = self.store.open(task_id)
        except StoreError:
            return None
        self._tasks[task_id] = task
        if len(self._tasks) > OPEN_TASKS:
            self._retire(self._tasks.popitem(last=False)[1])
        return task


def _shut(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


async def _sendall(conn: socket.socket, data: bytes) -> None:
    try:
        sent = conn.send(data)      # a head or a short answer: almost always all of it
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        async with asyncio.timeout(SEND_STALL):
            await asyncio.get_running_loop().sock_sendall(conn, memoryview(data)[sent:])


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    waiter = loop.create_future()
    # The callback fires on every loop turn while writable, possibly again
    # before this coroutine resumes: only the first one may resolve.
    loop.add_writer(fd, lambda: waiter.done() or waiter.set_result(None))
    try:
        async with asyncio.timeout(SEND_STALL):
            await waiter
    finally:
        loop.remove_writer(fd)
