"""Where the CDN puts origin bytes: straight into a store task, or a spool first.

``PieceSink`` takes a body of known length. Bytes are written (pwrite) into
the task's preallocated data file at their offset; each time a piece fills
up, a job on a hashing thread computes its sha256 and commits the piece
(bitmap bit set: from then on the upload server serves it), and another job
feeds it to the whole-file hash (see ``Hashers``). The commit's completion
calls ``on_piece`` on the event loop, which is when the scheduler hears of
the piece. hashlib releases the GIL on large buffers, so the loop keeps
receiving while pieces are hashed.

``SpoolSink`` takes a body of unknown length (chunked, no Content-Length):
the bytes go to a temporary file in the data dir, and only once the body has
ended (so the length is known) is the task created and filled from the spool,
piece by piece, with the same jobs. Pieces of such a file become schedulable
only after the whole body has arrived; that is the price of not knowing the
length up front.

Both sinks accept bytes a second time (``feed`` at a position below what they
hold) when an origin without Range support makes the CDN restart from byte 0:
such bytes are compared with what is held, and any difference is an
OriginError, so a file is never a mix of two versions.

What must stay true: no view of the mmap outlives a job, and the task file is
closed only after ``settle`` (no job still running).
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import hashlib
import os
from collections.abc import Callable

from engine.errors import IntegrityError, OriginError, from_oserror
from engine.taskfile import TaskFile

OnPiece = Callable[[int, str], None]


class _Sink(abc.ABC):
    offset = 0  # bytes held, contiguous from byte 0

    def feed(self, pos: int, chunk: bytes) -> None:
        """Take ``chunk`` found at byte ``pos`` of the body (``pos <= offset``)."""
        if pos < self.offset:
            overlap = min(len(chunk), self.offset - pos)
            self._verify(pos, memoryview(chunk)[:overlap])
            chunk, pos = chunk[overlap:], pos + overlap
        if chunk:
            assert pos == self.offset, "sinks take bytes in order"
            self._write(chunk)

    @abc.abstractmethod
    def _verify(self, pos: int, data: memoryview) -> None:
        """Check bytes that were already written (a restart re-reads them)."""

    @abc.abstractmethod
    def _write(self, chunk: bytes) -> None:
        """Take the next bytes of the body, in order."""


def _changed() -> OriginError:
    return OriginError("origin content changed during the download (bytes differ on restart)")


class Hashers:
    """The CDN's two hashing threads.

    ``ordered`` feeds the whole-file hash, so its jobs must run in piece
    order: one worker, FIFO. ``pieces`` computes and commits each piece's
    digest, in any order. Two threads, because every byte is hashed twice
    (its piece, the whole file) and hashing, not the network, is what limits a CDN fetch on loopback.
    """

    def __init__(self) -> None:
        self.ordered = concurrent.futures.ThreadPoolExecutor(1, "cdn-file-hash")
        self.pieces = concurrent.futures.ThreadPoolExecutor(1, "cdn-piece-hash")

    def shutdown(self) -> None:
        self.ordered.shutdown(wait=True, cancel_futures=True)
        self.pieces.shutdown(wait=True, cancel_futures=True)


class PieceSink(_Sink):
    """A known-length body into ``task``; see the module docstring."""

    def __init__(self, task: TaskFile, hashers: Hashers, on_piece: OnPiece,
                 extra_hasher=None) -> None:
        self.task, self.layout, self.hashers, self.on_piece = task, task.layout, hashers, on_piece
        self.offset = 0
        self.file_hash = hashlib.sha256()
        self.extra_hash = extra_hasher
        self._next_piece = 0  # first piece not yet handed to the jobs
        self._parts: dict[int, int] = {}  # jobs still open per piece
        self._jobs: list[concurrent.futures.Future] = []
        self._waiters: set[asyncio.Future] = set()
        self._error: BaseException | None = None
        self._closed = False

    def _write(self, chunk: bytes) -> None:
        if self.offset + len(chunk) > self.layout.length:
            raise OriginError(f"origin sent more than the {self.layout.length} bytes it announced")
        data = memoryview(chunk)
        while data:
            index = self.offset // self.layout.piece_size
            piece_end = self.layout.range(index).end
            n = min(len(data), piece_end - self.offset)
            # pwrite, not a copy into the mmap: writing fresh pages through
            # the mapping faults (and zeroes) each one first, several times
            # slower than letting the kernel copy into the page cache.
            _pwrite_all(self.task.fd, data[:n], self.offset)
            self.offset += n
            data = data[n:]
            if self.offset == piece_end:
                self._submit(index)

    def _verify(self, pos: int, data: memoryview) -> None:
        while data:
            index = pos // self.layout.piece_size
            piece = self.layout.range(index)
            n = min(len(data), piece.end - pos)
            with self.task.view(index) as held:
                if held[pos - piece.start:pos - piece.start + n] != data[:n]:
                    raise _changed()
            pos, data = pos + n, data[n:]

    def fill_from(self, fd: int) -> None:
        """Queue every piece to be copied from the spool ``fd`` (same offsets)."""
        for index in self.layout.indices():
            self._submit(index, fd)
        self.offset = self.layout.length

    def _submit(self, index: int, spool_fd: int = -1) -> None:
        assert index == self._next_piece, "pieces are handed over in order"
        self._next_piece += 1
        self._parts[index] = 2
        if spool_fd >= 0:
            # The piece job may only start once the bytes are in place.
            self._track(index, "copy", self.hashers.ordered.submit(self._copy, index, spool_fd))
        else:
            self._track(index, "file", self.hashers.ordered.submit(self._hash_file, index))
            self._track(index, "piece", self.hashers.pieces.submit(self._hash_piece, index))

    def _track(self, index: int, kind: str, job: concurrent.futures.Future) -> None:
        self._jobs.append(job)
        waiter = asyncio.wrap_future(job)
        self._waiters.add(waiter)
        waiter.add_done_callback(lambda f: self._done(index, kind, f))

    # The three jobs run on the hashing threads.

    def _copy(self, index: int, spool_fd: int) -> None:
        with self.task.view(index) as piece:
            if os.preadv(spool_fd, [piece], self.layout.range(index).start) != len(piece):
                raise OriginError("spool file ended early")
        self._hash_file(index)

    def _hash_file(self, index: int) -> None:
        with self.task.view(index) as piece:
            self.file_hash.update(piece)
            if self.extra_hash is not None:
                self.extra_hash.update(piece)

    def _hash_piece(self, index: int) -> str:
        with self.task.view(index) as piece:
            digest = hashlib.sha256(piece).hexdigest()
        self.task.publish_piece(index, digest)
        return digest

    def _done(self, index: int, kind: str, waiter: asyncio.Future) -> None:
        # On the event loop, when a job has ended.
        self._waiters.discard(waiter)
        if waiter.cancelled() or self._closed:
            return
        if waiter.exception() is not None:
            self._error = self._error or waiter.exception()
            return
        if self._error is not None:
            return
        try:
            if kind == "copy":
                self._track(index, "piece", self.hashers.pieces.submit(self._hash_piece, index))
            elif kind == "piece":
                self.on_piece(index, waiter.result())
            self._parts[index] -= 1
            if not self._parts[index]:
                # Neither the CDN nor its hashers touch the piece again: let
                # go of its pages (the page cache keeps them for uploads).
                self.task.release(index)
        except Exception as exc:  # noqa: BLE001 - surfaces in finish(), not the loop
            self._error = exc

    async def finish(self) -> str:
        """Wait for every piece's jobs; the whole file's sha256 (hex)."""
        if self.offset != self.layout.length:
            raise OriginError(f"origin body ended at {self.offset} of {self.layout.length} bytes")
        while self._waiters and self._error is None:
            # A copy job's completion queues a piece job: wait until none is left.
            await asyncio.gather(*list(self._waiters), return_exceptions=True)
        if self._error is not None:
            if isinstance(self._error, OSError):
                raise from_oserror(self._error, "writing CDN piece") from self._error
            raise self._error
        assert self._next_piece == self.layout.count
        return self.file_hash.hexdigest()

    def run_ordered(self, fn, *args) -> asyncio.Future:
        """Run ``fn`` on the ordered hashing thread, after every queued piece;
        ``settle`` waits for it like for any job (it may touch the task file)."""
        job = self.hashers.ordered.submit(fn, *args)
        self._jobs.append(job)
        return asyncio.wrap_future(job)

    def check_extra(self, expected_hex: str, what: str) -> None:
        if self.extra_hash is not None and self.extra_hash.hexdigest() != expected_hex:
            raise IntegrityError(f"origin content does not match the expected {what}")

    def settle(self) -> None:
        """Drop queued jobs and wait (briefly, blocking) for a running one.

        Called on the error and cancellation paths before the task file
        closes; blocking is bounded by hashing a single piece.
        """
        self._closed = True
        for job in self._jobs:
            job.cancel()
        concurrent.futures.wait(self._jobs)
        self._jobs.clear()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            offset += n
            data = data[n:]
    except OSError as exc:
        raise from_oserror(exc, "writing CDN piece") from exc


class SpoolSink(_Sink):
    """An unknown-length body into a temporary file at ``path`` (removed on close)."""

    def __init__(self, path: str) -> None:
        self.path, self.offset = path, 0
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise from_oserror(exc, f"creating spool {path}") from exc

    def _write(self, chunk: bytes) -> None:
        _pwrite_all(self.fd, memoryview(chunk), self.offset)
        self.offset += len(chunk)

    def _verify(self, pos: int, data: memoryview) -> None:
        if os.pread(self.fd, len(data), pos) != data:
            raise _changed()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
