"""The P2P path: register, then schedule rounds until the supernode says done.

Each round reports the results since the last one (batched, never one call
per piece) and asks for as many pieces as there are free fetch slots. The
supernode answers with an action:

- ``assign``: start one fetch per assignment, each from the source the
  scheduler chose (it picks different sources for one request), then wait
  for the first fetch to end before the next round;
- ``wait``: nothing to fetch now; wait ``wait_ms`` (a server hint) or for a
  running fetch to end, whichever is first;
- ``done``: this peer holds every piece;
- ``back_to_source`` / ``fail``: hand back to the caller.

A failed fetch is only reported (reason failed, refused, timeout or
corrupt); the scheduler decides whether and where to retry. The task is
created in the store (preallocated: the disk-space precheck) as soon as the
task view carries the length.

State belongs to one coroutine; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from functools import partial

from engine.download.context import Context, Job
from engine.download.fetch import fetch_piece
from engine.download.local import commit, open_or_create
from engine.download.sinks import FileSink, MemorySink
from engine.download.supernodes import SupernodeLink
from engine.errors import BadInput, IntegrityError, OriginError, SupernodeError
from engine.messages import (Assignment, PieceResult, RegisterRequest, ScheduleRequest,
                             ScheduleResponse, TaskView)
from engine.pieces import PieceLayout
from engine.store import TaskFile

log = logging.getLogger(__name__)
MIN_WAIT = 0.01  # seconds; a floor under server hints so a 0 never spins
META_SAVE_INTERVAL = 2.0  # seconds between saves of a partial task's piece digests


@dataclass(frozen=True, slots=True)
class P2PEnd:
    """How the P2P path ended: ``done`` (every piece verified) or ``back_to_source``."""

    action: str
    view: TaskView
    message: str = ""


async def download_p2p(ctx: Context, job: Job) -> P2PEnd:
    request = job.request
    link = SupernodeLink(ctx.session, ctx.supernodes, request.task_id, ctx.rpc_timeout)
    try:
        view = await link.register(RegisterRequest(
            request.url, ctx.peer, request.headers, request.tag, request.digest,
            request.filter_params))
        ctx.on_registered(view.task_id, link.current)
        job.set_state("downloading")
        return await _rounds(ctx, job, link, view)
    finally:
        ctx.stats.supernode_failovers += link.failovers


async def _rounds(ctx: Context, job: Job, link: SupernodeLink, view: TaskView) -> P2PEnd:
    peer_id = ctx.peer.peer_id
    inflight: dict[asyncio.Task, Assignment] = {}
    deferred: dict[int, list[Assignment]] = {}  # the same piece assigned again while in flight
    results: list[PieceResult] = []
    saved_at = time.monotonic()
    try:
        while True:
            if job.task is not None and job.task.task_id != view.task_id:
                # A failover landed on a supernode that names the file differently
                # (another version): its pieces are another store entry.
                await _cancel(inflight)
                await ctx.quiesce()
                deferred.clear()
                results.clear()
                job.drop_task()
            _ensure_task(ctx, job, view)
            if job.task is not None and job.task.complete:
                return P2PEnd("done", view)  # this host already holds that version
            before = link.current
            response = await link.schedule(ScheduleRequest(
                view.task_id, peer_id, tuple(results), max(0, ctx.parallel - len(inflight))))
            results = []
            view = response.task
            if link.current != before:
                ctx.on_registered(view.task_id, link.current)
            if job.task is not None and job.task.task_id != view.task_id:
                continue
            _ensure_task(ctx, job, view)
            action = response.action
            if action == "fail":
                raise _failure(view, response.message)
            if action == "back_to_source":
                return P2PEnd(action, view, response.message)
            if action == "done":
                if job.task is None or not job.task.bitmap.complete():
                    raise SupernodeError(f"supernode {link.current} says done, but this peer "
                                         f"lacks pieces of {view.task_id}")
                return P2PEnd(action, view, response.message)
            if action == "assign":
                _start(ctx, job, response, inflight, deferred, results)
            timeout = None if action == "assign" else max(response.wait_ms / 1000, MIN_WAIT)
            if inflight:
                finished, _ = await asyncio.wait(inflight, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    assignment = inflight.pop(fut)
                    result = fut.result()
                    results.append(result)
                    for dup in deferred.pop(assignment.piece, ()):
                        results.append(PieceResult(dup.piece, dup.source, True, 0, 0)
                                       if result.ok else
                                       PieceResult(dup.piece, dup.source, False, reason="refused"))
                if time.monotonic() - saved_at >= META_SAVE_INTERVAL and job.task is not None:
                    # Verified pieces survive a crash only if their digests are on disk.
                    await ctx.on_disk(job.task.save_meta)
                    saved_at = time.monotonic()
            elif not results:
                await asyncio.sleep(timeout if timeout is not None else MIN_WAIT)
    finally:
        await _cancel(inflight)


async def _cancel(inflight: dict[asyncio.Task, Assignment]) -> None:
    for fut in inflight:
        fut.cancel()
    await asyncio.gather(*inflight, return_exceptions=True)
    inflight.clear()


def _start(ctx: Context, job: Job, response: ScheduleResponse,
           inflight: dict[asyncio.Task, Assignment], deferred: dict[int, list[Assignment]],
           results: list[PieceResult]) -> None:
    task = job.task
    if task is None:
        raise SupernodeError("supernode assigned pieces before telling the file's length")
    running = {a.piece for a in inflight.values()}
    for a in response.assignments:
        if a.piece in running:
            deferred.setdefault(a.piece, []).append(a)
        elif task.has(a.piece):
            results.append(PieceResult(a.piece, a.source, True, 0, 0))
        else:
            running.add(a.piece)
            inflight[asyncio.ensure_future(_fetch(ctx, job, task, a))] = a


async def _fetch(ctx: Context, job: Job, task: TaskFile, a: Assignment) -> PieceResult:
    """One piece from one source into the mmap, verified; never raises a RemoteError."""
    try:
        size = task.layout.size_of(a.piece)
    except BadInput:
        size = -1
    if size != a.size:
        return _failed(ctx, a, "failed", 0, f"piece {a.piece} has {size} bytes, told {a.size}")
    if ctx.pacer is not None and size:
        await ctx.pacer.acquire(size)
    if ctx.receive == "pwrite":
        make_sink = partial(FileSink, task.fd, task.layout.range(a.piece).start, size)
    else:
        make_sink = partial(_mmap_sink, task, a.piece)
    timeout = ctx.piece_timeout + size / ctx.min_rate  # a 64 MiB piece on a slow link
    fetched = await fetch_piece(ctx.pool, task.task_id, a, make_sink, timeout)
    if fetched.reason is not None:
        return _failed(ctx, a, fetched.reason, fetched.millis, fetched.detail)
    try:
        await ctx.on_disk(commit, task, a.piece, a.sha256)
    except IntegrityError:
        return _failed(ctx, a, "corrupt", fetched.millis, "digest mismatch")
    stats = ctx.stats
    if a.is_cdn:
        stats.bytes_from_cdn += size
        stats.pieces_from_cdn += 1
    else:
        stats.bytes_from_peers += size
        stats.pieces_from_peers += 1
    job.piece_done(size, "cdn" if a.is_cdn else "peers")
    return PieceResult(a.piece, a.source, True, size, fetched.millis)


def _mmap_sink(task: TaskFile, piece: int) -> MemorySink:
    return MemorySink(task.view(piece))


def _failed(ctx: Context, a: Assignment, reason: str, millis: int, detail: str) -> PieceResult:
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


def _ensure_task(ctx: Context, job: Job, view: TaskView) -> None:
    """Create (or reopen) the task in the store once the length is known."""
    if job.task is not None or view.length is None:
        return
    layout = (PieceLayout(view.length, view.piece_size) if view.piece_size
              else PieceLayout.for_length(view.length))
    if view.piece_count is not None and view.piece_count != layout.count:
        raise SupernodeError(f"task view of {view.task_id} has {view.piece_count} pieces "
                             f"for {layout.count} by its length")
    # Stored under the supernode's name for the file (its version id), which is
    # the name every peer asks for in /pieces/<id>/<n>.
    job.set_task(open_or_create(ctx.store, view.task_id, job.request.url, layout))


def _failure(view: TaskView, message: str) -> Exception:
    text = message or view.error or "the supernode gave up on the task"
    if view.error_kind == "IntegrityError":
        return IntegrityError(text)
    if view.error_status is not None or view.state == "failed":
        return OriginError(text, view.error_status)
    return SupernodeError(text)
