"""The P2P path: register, then schedule rounds until the supernode says done.

The schedule call is never on a piece's critical path. One coroutine keeps
``parallel`` fetches receiving; when one of them has received half its piece
(engine.download.piece.NEAR_DONE) a schedule call goes out in the
background for its successor, which starts as soon as it is assigned, so
that its request, its source's first bytes and its TCP ramp overlap the end
of the fetch it follows. A fetch whose body is in holds no slot while its
hash and writes finish (on the hasher and disk threads, behind other
pieces' jobs). In the 10-host lab, with a fetch's successor started only
when the fetch had ended and been verified, a fifth of the fetch slots sat
idle at any moment (the shaped links queue up to 100 ms, so a request and
its first bytes take tens of milliseconds each way). Every call reports the results since the last one
(batched, never one call per piece). At most one call is in flight; results
and requests that come up meanwhile ride on the next one. The supernode
answers with an action:

- ``assign``: queue the assignments, each from the source the scheduler
  chose (it picks different sources for one request);
- ``wait``: nothing to fetch now; ask again after ``wait_ms`` (a server
  hint), or as soon as a fetch ends and there is a result to report;
- ``done``: this peer holds every piece;
- ``back_to_source`` / ``fail``: hand back to the caller.

Endgame. Near the end the scheduler may name a second source for a piece
whose attempt has run for a while (a stalled or slow source). That second
attempt races the first into a private buffer (engine.download.piece.race);
whichever delivers verified bytes first wins, the other is cancelled. Any
further assignment of a piece already being fetched waits for the outcome
and is answered with it.

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
from collections import deque
from dataclasses import dataclass

from engine.download import piece
from engine.download.context import Context, Job
from engine.download.local import install, open_or_create
from engine.download.supernodes import SupernodeLink
from engine.errors import IntegrityError, OriginError, SupernodeError
from engine.messages import (Assignment, PieceResult, RegisterRequest, ScheduleRequest,
                             ScheduleResponse, TaskView)
from engine.pieces import PieceLayout

log = logging.getLogger(__name__)
MIN_WAIT = 0.01  # seconds; a floor under server hints so a 0 never spins
# Endgame races running at once: each holds a piece-sized buffer.
MAX_RACES = 2
_REJOIN = "rejoin"  # _answered's word for "done", said to a peer that lacks pieces


@dataclass(frozen=True, slots=True)
class P2PEnd:
    """How the P2P path ended: ``done`` (every piece verified) or ``back_to_source``."""

    action: str
    view: TaskView
    message: str = ""


async def download_p2p(ctx: Context, job: Job) -> P2PEnd:
    request = job.request
    link = SupernodeLink(ctx.rpc, ctx.supernodes, request.task_id, ctx.rpc_timeout)
    try:
        view = await link.register(RegisterRequest(
            request.url, ctx.peer, request.headers, request.tag, request.digest,
            request.filter_params))
        ctx.on_registered(view.task_id, link.current)
        job.set_state("downloading")
        return await _Rounds(ctx, job, link).run(view)
    finally:
        ctx.stats.supernode_failovers += link.failovers


class _Rounds:
    """The schedule loop of one download (see the module docstring)."""

    def __init__(self, ctx: Context, job: Job, link: SupernodeLink) -> None:
        self.ctx, self.job, self.link = ctx, job, link
        self.inflight: dict[asyncio.Future, Assignment] = {}  # fetches, by task
        self.ready: deque[Assignment] = deque()        # assigned, waiting for a fetch slot
        self.near: set[int] = set()                    # pieces of fetches past NEAR_DONE
        self.landed: set[int] = set()                  # body in, hash and writes pending
        self.races: dict[asyncio.Future, Assignment] = {}  # endgame second sources
        self.deferred: dict[int, list[Assignment]] = {}    # assigned again meanwhile
        self.results: list[PieceResult] = []
        self.rpc: asyncio.Future | None = None
        self._asked_at: str | None = None  # the supernode the call went to
        self.quiet_until = 0.0  # after a "wait": no asking before then (results still go)
        self.wake = asyncio.get_running_loop().create_future()  # a fetch got near done
        self.rejoined = False  # see _rejoin

    async def run(self, view: TaskView) -> P2PEnd:
        ctx, job = self.ctx, self.job
        try:
            while True:
                if job.task is not None and job.task.task_id != view.task_id:
                    # A failover landed on a supernode that names the file differently
                    # (another version): its pieces are another store entry.
                    await self._cancel_all()
                    await ctx.quiesce()
                    job.drop_task()
                _ensure_task(ctx, job, view)
                if job.task is not None and job.task.complete:
                    return P2PEnd("done", view)  # this host already holds that version
                self._start_ready()
                want = self._ask(view)
                if self.wake.done():
                    self.wake = asyncio.get_running_loop().create_future()
                waiting = {*self.inflight, *self.races, self.wake}
                if self.rpc is not None:
                    waiting.add(self.rpc)
                timeout = (max(self.quiet_until - time.monotonic(), MIN_WAIT)
                           if self.rpc is None and want else None)
                finished, _ = await asyncio.wait(waiting, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                for fut in finished:
                    if fut in self.inflight:
                        await self._fetched(fut)
                for fut in finished:
                    if fut in self.races:
                        await self._raced(fut)
                if self.rpc is not None and self.rpc in finished:
                    view, end = self._answered(view)
                    if end is not None and end.action == _REJOIN:
                        view = await self._rejoin(end)
                    elif end is not None:
                        return end
        finally:
            await self._cancel_all()

    def _receiving(self) -> int:
        return len(self.inflight) - len(self.landed)

    def _start_ready(self) -> None:
        # A successor asked for at NEAR_DONE starts at once, beside the fetch
        # it follows: its request, its source's first bytes and its TCP ramp
        # then overlap the end of that fetch instead of following it.
        while self.ready and self._receiving() < self.ctx.parallel + len(self.near):
            a = self.ready.popleft()
            fut = asyncio.ensure_future(piece.fetch(self.ctx, self.job, self.job.task, a,
                                                    self._nudge, self._landed))
            self.inflight[fut] = a

    def _nudge(self, index: int) -> None:
        self.near.add(index)
        if not self.wake.done():
            self.wake.set_result(None)

    def _landed(self, index: int) -> None:
        self.near.discard(index)
        self.landed.add(index)
        if not self.wake.done():
            self.wake.set_result(None)

    def _ask(self, view: TaskView) -> int:
        """Send a schedule call if none is out and there is something to say."""
        want = max(0, self.ctx.parallel + len(self.near) - self._receiving() - len(self.ready))
        if self.rpc is None and (self.results or (want and time.monotonic() >= self.quiet_until)):
            self.rpc = asyncio.ensure_future(self.link.schedule(ScheduleRequest(
                view.task_id, self.ctx.peer.peer_id, tuple(self.results), want)))
            self._asked_at, self.results = self.link.current, []
        return want

    def _answered(self, view: TaskView) -> tuple[TaskView, P2PEnd | None]:
        response, self.rpc = self.rpc.result(), None
        view, job, link = response.task, self.job, self.link
        if link.current != self._asked_at:
            self.ctx.on_registered(view.task_id, link.current)
        if job.task is not None and job.task.task_id != view.task_id:
            return view, None  # another version: the loop starts over
        _ensure_task(self.ctx, job, view)
        action = response.action
        if action == "fail":
            raise _failure(view, response.message)
        if action == "back_to_source":
            return view, P2PEnd(action, view, response.message)
        if action == "done":
            if job.task is None or not job.task.bitmap.complete():
                return view, P2PEnd(_REJOIN, view, f"supernode {link.current} says done, but "
                                                   f"this peer lacks pieces of {view.task_id}")
            return view, P2PEnd(action, view, response.message)
        if action == "assign":
            self._accept(response)
        else:
            self.quiet_until = time.monotonic() + max(response.wait_ms / 1000, MIN_WAIT)
        return view, None

    async def _rejoin(self, end: P2PEnd) -> TaskView:
        """Leave the task at the supernode and register again, as a newcomer.

        The supernode counts this peer as holding pieces its store no longer
        has: the store discarded the task (a hard-linked output edited in
        place, engine.taskfile.TaskFile.changed_since_complete) or lost it, and
        a leave after that got lost. Once per download; a second time it is
        the supernode's error.
        """
        if self.rejoined:
            raise SupernodeError(end.message)
        self.rejoined = True
        log.warning("%s: leaving the task there and registering again", end.message)
        await self._cancel_all()
        return await self.link.rejoin(self.ctx.peer.peer_id, end.view.task_id)

    def _accept(self, response: ScheduleResponse) -> None:
        """Queue new assignments. A second source for a running piece (endgame)
        races it; for a queued piece, or past MAX_RACES, it waits for that one."""
        task = self.job.task
        if task is None:
            raise SupernodeError("supernode assigned pieces before telling the file's length")
        running = {a.piece: a.source for a in self.inflight.values()}
        taken = {*running, *(a.piece for a in self.ready), *(a.piece for a in self.races.values())}
        for a in response.assignments:
            if (a.piece in running and running[a.piece] != a.source
                    and self._race_for(a.piece) is None and len(self.races) < MAX_RACES):
                self.races[asyncio.ensure_future(piece.race(self.ctx, task, a))] = a
            elif a.piece in taken:
                self.deferred.setdefault(a.piece, []).append(a)
            elif task.has(a.piece):
                self.results.append(PieceResult(a.piece, a.source, True, 0, 0))
            else:
                taken.add(a.piece)
                self.ready.append(a)

    async def _fetched(self, fut: asyncio.Future) -> None:
        a = self.inflight.pop(fut)
        self.near.discard(a.piece)
        self.landed.discard(a.piece)
        result = fut.result()
        self.results.append(result)
        if result.ok:
            race = self._race_for(a.piece)
            if race is not None:  # the first attempt won after all
                loser = self.races.pop(race)
                await _cancel_races({race: loser})
                self.results.append(PieceResult(loser.piece, loser.source, True, 0, 0))
        self._settle_deferred(a.piece, result.ok)

    async def _raced(self, fut: asyncio.Future) -> None:
        a = self.races.pop(fut)
        result, buf = fut.result()
        if buf is None:
            self.results.append(result)
            self._settle_deferred(a.piece, False)
            return
        try:
            first = next((f for f, b in self.inflight.items() if b.piece == a.piece), None)
            if first is not None:  # the stalled attempt loses: stop it, then write ours
                slow = self.inflight.pop(first)
                self.near.discard(a.piece)
                self.landed.discard(a.piece)
                await _cancel({first: slow})
                self.results.append(piece.failed(self.ctx, slow, "timeout", 0,
                                                 "a second source delivered first"))
            await self.ctx.on_disk(install, self.job.task, a.piece, buf, a.sha256)
        finally:
            piece.drop(buf)
        self.results.append(piece.delivered(self.ctx, self.job, a, result.nbytes,
                                            result.millis))
        self._settle_deferred(a.piece, True)

    def _race_for(self, index: int) -> asyncio.Future | None:
        return next((f for f, a in self.races.items() if a.piece == index), None)

    def _running(self, index: int) -> bool:
        return any(a.piece == index for a in self.inflight.values())

    def _settle_deferred(self, index: int, ok: bool) -> None:
        """Answer for the extra assignments of a piece once its outcome is known."""
        if not ok and (self._running(index) or self._race_for(index) is not None):
            return  # another attempt at it is still going
        for dup in self.deferred.pop(index, ()):
            self.results.append(PieceResult(dup.piece, dup.source, True, 0, 0) if ok else
                                PieceResult(dup.piece, dup.source, False, reason="refused"))

    async def _cancel_all(self) -> None:
        if self.rpc is not None:
            self.rpc.cancel()
            await asyncio.gather(self.rpc, return_exceptions=True)
            self.rpc = None
        await _cancel(self.inflight)
        await _cancel_races(self.races)
        self.ready.clear()
        self.near.clear()
        self.landed.clear()
        self.deferred.clear()
        self.results.clear()


async def _cancel(fetches: dict[asyncio.Future, Assignment]) -> None:
    for fut in fetches:
        fut.cancel()
    await asyncio.gather(*fetches, return_exceptions=True)
    fetches.clear()


async def _cancel_races(races: dict[asyncio.Future, Assignment]) -> None:
    """Cancel races; one that had already won gives its buffer back."""
    for fut in races:
        fut.cancel()
    for outcome in await asyncio.gather(*races, return_exceptions=True):
        if isinstance(outcome, tuple) and outcome[1] is not None:
            piece.drop(outcome[1])
    races.clear()


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
    job.set_task(open_or_create(ctx.store, view.task_id, job.request.url, layout,
                                job.output_copy))


def _failure(view: TaskView, message: str) -> Exception:
    text = message or view.error or "the supernode gave up on the task"
    if view.error_kind == "IntegrityError":
        return IntegrityError(text)
    if view.error_status is not None or view.state == "failed":
        return OriginError(text, view.error_status)
    return SupernodeError(text)
