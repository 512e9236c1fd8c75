"""One piece from one source: fetched, verified and published, or a result saying why not.

``fetch`` is the normal path: the body goes through a FileSink into the
task file (hashed and exported on the way, engine.download.sinks) or into
the mmap (``receive="mmap"``), and is published once its sha256 matches.

``race`` is the endgame path: the scheduler asks a second source for a
piece whose first attempt has been running for a while (a stalled or slow
source). Two attempts must never write the same range of the task file (a
corrupt loser could overwrite the winner's verified bytes), so the second
one goes into a private buffer and is verified there; the caller installs
it (``local.install``) only after the first attempt was cancelled.

Neither raises a RemoteError: a failure is a PieceResult with a wire reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mmap
from collections.abc import Callable
from functools import partial

from engine.download.context import Context, Job
from engine.download.fetch import fetch_piece
from engine.download.local import commit, verify_streamed
from engine.download.sinks import FileSink, MemorySink, anonymous
from engine.errors import BadInput, IntegrityError
from engine.messages import Assignment, PieceResult
from engine.taskfile import TaskFile

log = logging.getLogger(__name__)
# A fetch that has received this share of its piece calls its ``nudge``:
# the schedule loop asks for the next piece while this one finishes.
NEAR_DONE = 0.5


async def fetch(ctx: Context, job: Job, task: TaskFile, a: Assignment,
                nudge: Callable[[int], None] | None = None,
                received: Callable[[int], None] | None = None) -> PieceResult:
    """``a.piece`` from ``a.source`` into the task file, verified and published.

    ``nudge(piece)`` is called when NEAR_DONE of the body has arrived,
    ``received(piece)`` when all of it has: from then on the fetch only
    waits for its hash and its writes, which need no connection.
    """
    size = await _admit(ctx, task, a)
    if isinstance(size, PieceResult):
        return size
    sinks: list[FileSink] = []
    if ctx.receive == "pwrite":
        start = task.layout.range(a.piece).start
        near = (int(size * NEAR_DONE), partial(nudge, a.piece)) if nudge is not None else None

        def make_sink() -> FileSink:
            sinks.append(FileSink(task.fd, start, size, direct=task.direct_fd, writer=ctx.disk, hasher=ctx.hasher,
                                  exporter=ctx.export, pool=ctx.bounce,
                                  outputs=tuple(job.outputs), near=near))
            return sinks[-1]
    else:
        make_sink = partial(_mmap_sink, task, a.piece)
    fetched = await fetch_piece(ctx.pool, task.task_id, a, make_sink, _timeout(ctx, size))
    if fetched.reason is not None:
        return failed(ctx, a, fetched.reason, fetched.millis, fetched.detail)
    if received is not None:
        received(a.piece)
    try:
        if sinks:  # hashed on the way to the file; the last attempt holds the bytes
            sink = sinks[-1]
            actual = None       # no hasher of its own: the disk thread's write jobs hashed
            if sink.hasher is not None:
                actual = await asyncio.get_running_loop().run_in_executor(ctx.hasher, sink.sha256)
            await ctx.on_disk(verify_streamed, task, a.piece, a.sha256, sink, actual)
        else:
            await ctx.on_disk(commit, task, a.piece, a.sha256)
    except IntegrityError:
        return failed(ctx, a, "corrupt", fetched.millis, "digest mismatch")
    return delivered(ctx, job, a, size, fetched.millis)


async def race(ctx: Context, task: TaskFile, a: Assignment
               ) -> tuple[PieceResult, mmap.mmap | None]:
    """``a.piece`` into a private buffer, verified: (ok result, buffer) or (failure, None).

    The caller owns the buffer, installs it and closes it; the result's
    bytes are not yet counted as delivered (the caller does that if it wins).
    """
    size = await _admit(ctx, task, a)
    if isinstance(size, PieceResult):
        return size, None
    buf = anonymous(max(size, 1))
    try:
        fetched = await fetch_piece(ctx.pool, task.task_id, a,
                                    partial(_buffer_sink, buf, size), _timeout(ctx, size))
        if fetched.reason is not None:
            drop(buf)
            return failed(ctx, a, fetched.reason, fetched.millis, fetched.detail), None
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(ctx.hasher, _sha256, buf, size) != a.sha256:
            drop(buf)
            return failed(ctx, a, "corrupt", fetched.millis, "digest mismatch"), None
    except BaseException:
        drop(buf)
        raise
    return PieceResult(a.piece, a.source, True, size, fetched.millis), buf


def drop(buf: mmap.mmap) -> None:
    """Unmap a race buffer; if a thread still reads it (a cancelled hash job),
    the mapping goes when that view does."""
    try:
        buf.close()
    except BufferError:
        pass


def delivered(ctx: Context, job: Job, a: Assignment, size: int, millis: int) -> PieceResult:
    stats = ctx.stats
    if a.is_cdn:
        stats.bytes_from_cdn += size
        stats.pieces_from_cdn += 1
    else:
        stats.bytes_from_peers += size
        stats.pieces_from_peers += 1
    job.piece_done(size, "cdn" if a.is_cdn else "peers")
    return PieceResult(a.piece, a.source, True, size, millis)


def failed(ctx: Context, a: Assignment, reason: str, millis: int, detail: str) -> PieceResult:
    stats = ctx.stats
    stats.pieces_failed += 1
    if reason == "corrupt":
        stats.pieces_corrupt += 1
    elif reason == "refused":
        stats.pieces_refused += 1
    elif reason == "timeout":
        stats.pieces_timeout += 1
    log.info("piece %d from %s (%s): %s, %s", a.piece, a.source, a.addr, reason, detail)
    return PieceResult(a.piece, a.source, False, 0, millis, reason)


async def _admit(ctx: Context, task: TaskFile, a: Assignment) -> int | PieceResult:
    """The piece's size once the pacer lets it go, or a failure if the
    assignment disagrees with the layout."""
    try:
        size = task.layout.size_of(a.piece)
    except BadInput:
        size = -1
    if size != a.size:
        return failed(ctx, a, "failed", 0, f"piece {a.piece} has {size} bytes, told {a.size}")
    if ctx.pacer is not None and size:
        await ctx.pacer.acquire(size)
    return size


def _timeout(ctx: Context, size: int) -> float:
    return ctx.piece_timeout + size / ctx.min_rate  # a 64 MiB piece on a slow link


def _mmap_sink(task: TaskFile, piece: int) -> MemorySink:
    return MemorySink(task.view(piece))


def _buffer_sink(buf: mmap.mmap, size: int) -> MemorySink:
    return MemorySink(memoryview(buf)[:size])


def _sha256(buf: mmap.mmap, size: int) -> str:
    with memoryview(buf)[:size] as view:
        return hashlib.sha256(view).hexdigest()
