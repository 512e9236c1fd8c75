"""The Downloader: one per worker process; turns a DownloadRequest into a complete task.

Order of preference for a request:

1. the local store: the task id is computed locally (engine.identity), so a
   complete task answers at once, with no network at all;
2. a download already running in this process for the same task: join it
   (one asyncio task per task id, however many callers);
3. the swarm (engine.download.p2p), with the supernodes tried in
   rendezvous order;
4. the origin (engine.download.origin), when no supernode answers or the
   supernode says back_to_source, and the request allows it.

The finished task stays in the store, servable by the upload server of this
host; the daemon expires it. Which supernode schedules each task for this
peer, the heartbeat, leaving, and offering the store's complete tasks again
after a restart (``announce_cached``) are engine.download.membership's.

Each caller gets its own open TaskFile of the complete task and must close
it. One event loop owns a Downloader; it is not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from engine.control import Chain
from engine.download.context import Context, Job, ProgressCallback
from engine.download.fetch import ConnectionPool
from engine.download.local import finish_verified, open_complete
from engine.download.membership import Memberships
from engine.download.origin import download_from_origin
from engine.download.output import OutputFile
from engine.download.p2p import download_p2p
from engine.download.request import DownloadRequest, DownloadStats, Progress
from engine.download.rpc import RpcClient
from engine.download.sinks import BouncePool, default_disk_threads
from engine.download.supernodes import Unreachable
from engine.errors import (BadInput, ClosedByUs, DamselflyError, IntegrityError, StoreError,
                           SupernodeError)
from engine.lazysync import LazySyncs
from engine.messages import PeerInfo
from engine.meta import redact_url
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import TaskId
from engine.upload import Pacer

log = logging.getLogger(__name__)
RECEIVE_MODES = ("mmap", "pwrite")


class Downloader:
    """Downloads tasks into ``store`` as ``peer``, scheduled by ``supernodes``."""

    def __init__(self, store: PieceStore, supernodes: list[str], peer: PeerInfo, *,
                 parallel: int = 4, pacer: Pacer | None = None,
                 session: aiohttp.ClientSession | None = None, piece_timeout: float = 30.0,
                 min_rate: float = 1 << 20, rpc_timeout: float = 10.0,
                 heartbeat_interval: float = 10.0, origin_read_timeout: float = 60.0,
                 receive: str = "pwrite", disk_threads: int | None = None) -> None:
        if not 1 <= parallel <= 64:
            raise BadInput("parallel must be within 1..64")
        if receive not in RECEIVE_MODES:
            raise BadInput(f"receive must be one of {RECEIVE_MODES}")
        if disk_threads is None:
            disk_threads = default_disk_threads()
        if disk_threads not in (1, 3):
            raise BadInput("disk_threads must be 1 or 3")
        if min(piece_timeout, min_rate, rpc_timeout, heartbeat_interval,
               origin_read_timeout) <= 0:
            raise BadInput("timeouts, rates and intervals must be > 0")
        self.store, self.supernodes, self.peer = store, list(supernodes), peer
        self.parallel, self.pacer, self.receive = parallel, pacer, receive
        self.piece_timeout, self.min_rate, self.rpc_timeout = piece_timeout, min_rate, rpc_timeout
        self.heartbeat_interval, self.origin_read_timeout = heartbeat_interval, origin_read_timeout
        self.stats = DownloadStats()
        self._session = session
        self._own_session = session is None
        self._rpc = RpcClient()
        self._pool = ConnectionPool()
        self._bounce = BouncePool()
        # One thread each, so that each runs its jobs in order (engine.download.
        # sinks): the disk thread owns the store's files; received bytes are
        # hashed on another; output files are written on a third (those
        # writes wait for the device, O_DIRECT, without holding the others).
        # With ``disk_threads=1`` the disk thread does all three, one job per
        # buffer (see ``default_disk_threads``).
        self._disk = ThreadPoolExecutor(1, thread_name_prefix="damselfly-disk")
        if disk_threads == 3:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="damselfly-hash")
            self._export = ThreadPoolExecutor(1, thread_name_prefix="damselfly-export")
        else:
            self._hasher = self._export = self._disk
        self._jobs: dict[TaskId, Job] = {}
        self._members = Memberships(store, self.supernodes, peer, self._rpc,
                                    rpc_timeout=rpc_timeout,
                                    heartbeat_interval=heartbeat_interval,
                                    busy=lambda: bool(self._jobs))
        self._closed = False
        self._threads_closed = False
        # A task completes without waiting for the disk, synced later (engine.lazysync).
        self.syncs = LazySyncs(store, self._disk)

    async def __aenter__(self) -> Downloader:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    @property
    def heartbeating(self) -> bool:
        """True while a heartbeat task runs (this peer downloads or seeds something)."""
        return self._members.heartbeating

    async def download(self, request: DownloadRequest,
                       on_progress: ProgressCallback | None = None, *,
                       pacer: Pacer | None = None,
                       output: OutputFile | None = None) -> TaskFile:
        """The complete task for ``request``, downloading it if need be.

        ``pacer`` limits this download (e.g. a LocalBucket for dfget
        --limit), in front of the Downloader's own pacer; a caller that
        joins a download already running gets that download's pacing, not
        its own. ``output`` is written while the pieces arrive; on success
        the caller completes it with ``output.finish(task)``, on failure it
        is abandoned here (nothing appears at its path). Without one the
        caller links the output to the task: the disk-space precheck of a
        download it starts then counts the task alone.

        Raises OriginError, SupernodeError, IntegrityError, NotEnoughSpace,
        ClosedByUs (the request's timeout, or aclose), StoreError.
        """
        if self._closed:
            raise ClosedByUs("the downloader is closed")
        self.stats.downloads += 1
        task_id = request.task_id
        job = self._jobs.get(task_id)
        if job is None:
            local = open_complete(self.store, task_id)
            if local is not None:
                self.stats.local_hits += 1
                if on_progress is not None:
                    n, count = local.meta.length, local.layout.count
                    on_progress(Progress(task_id, n, n, count, count, state="complete"))
                return local
            job = Job(request, Progress(task_id), pacer=pacer, output_copy=output is not None)
            self._jobs[task_id] = job
            job.runner = asyncio.create_task(self._run(job), name=f"download {task_id.hex[:12]}")
            job.runner.add_done_callback(lambda t, job=job: self._job_ended(job, t))
        else:
            self.stats.joined += 1
        job.waiters += 1
        if on_progress is not None:
            job.callbacks.append(on_progress)
            on_progress(job.progress.copy())
        if output is not None:
            job.outputs.append(output)
        ok = False
        try:
            try:
                async with asyncio.timeout(request.timeout):
                    await asyncio.shield(job.runner)
            except TimeoutError as exc:
                raise ClosedByUs(f"downloading {redact_url(request.url)} took longer than "
                                 f"{request.timeout:g}s") from exc
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if job.runner.cancelled() and (me is None or not me.cancelling()):
                    # The job was cancelled under us (aclose), not this caller.
                    raise ClosedByUs("the download was cancelled: the downloader is closing") \
                        from None
                raise
            assert job.store_id is not None
            task = self.store.open(job.store_id)
            if job.reservation is not None:  # the first caller holds the output's space
                task.reservation, job.reservation = job.reservation, None
            ok = True
            return task
        finally:
            job.waiters -= 1
            if on_progress is not None and on_progress in job.callbacks:
                job.callbacks.remove(on_progress)
            if output is not None:
                job.outputs.remove(output)
                if not ok:
                    self._abandon(job, output)
            if job.waiters == 0:
                if not job.runner.done():
                    job.runner.cancel()  # nobody wants it any more
                elif job.reservation is not None:
                    job.reservation.release()
                    job.reservation = None

    async def announce_cached(self) -> int:
        """Offer the complete tasks in the store to the supernodes, so that this
        host seeds them again after a restart; how many were taken."""
        return await self._members.announce_cached()

    async def leave(self, task_id: TaskId | None = None) -> None:
        """Tell the supernode this peer no longer serves ``task_id`` (None: any task).

        ``task_id`` is the task's name in the store (``TaskFile.task_id``, the
        supernode's version id), not necessarily ``DownloadRequest.task_id``.
        The daemon calls this when it expires a task; best effort. When
        nothing is left to serve, the heartbeat stops.
        """
        await self._members.leave(task_id)

    async def aclose(self) -> None:
        """Cancel running downloads, leave every task, release everything."""
        if self._closed:
            return
        self._closed = True
        runners = [job.runner for job in self._jobs.values() if job.runner is not None]
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
        await self.syncs.flush()               # completions still waiting: now
        await self._members.close()
        self._pool.close()
        self._rpc.close()
        if self._own_session and self._session is not None:
            await self._session.close()
        self._threads_closed = True
        for executor in dict.fromkeys((self._disk, self._hasher, self._export)):  # distinct
            executor.shutdown(wait=True)

    # -- internals

    def _abandon(self, job: Job, output: OutputFile) -> None:
        """Abort ``output`` behind the export jobs that may still write into it."""
        if job.runner.done() or self._threads_closed:
            output.abort()  # the job quiesced the threads before it ended
        else:
            self._export.submit(output.abort)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Origins only (supernodes: engine.download.rpc). No cookie jar: one
            # request's cookies must never ride along with another user's.
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def _context(self, job: Job) -> Context:
        def registered(store_id: TaskId, node: str | None) -> None:
            if node is not None:
                self._members.registered(store_id, node)

        pacer = self.pacer if job.pacer is None else Chain(job.pacer, self.pacer)
        return Context(self.store, self.supernodes, self.peer, self._get_session(), self._rpc,
                       self._pool, self._disk, self._hasher, self._export, self.stats,
                       parallel=self.parallel, pacer=pacer,
                       piece_timeout=self.piece_timeout, min_rate=self.min_rate,
                       receive=self.receive,
                       rpc_timeout=self.rpc_timeout,
                       origin_read_timeout=self.origin_read_timeout, on_registered=registered,
                       bounce=self._bounce)

    async def _run(self, job: Job) -> None:
        request, ctx = job.request, self._context(job)
        trusted: dict[str, str] = {}
        cdn_sha256 = None
        corrupt = False
        view = None
        try:
            reason = "no supernode is configured"
            go_origin = not self.supernodes
            if self.supernodes:
                try:
                    end = await download_p2p(ctx, job)
                except Unreachable as exc:
                    go_origin, reason = True, str(exc)
                else:
                    view = end.view
                    if end.action == "done":
                        cdn_sha256 = view.sha256
                    else:
                        go_origin = True
                        reason = end.message or "the supernode said to go back to the source"
            if go_origin:
                if not request.back_source:
                    raise SupernodeError(f"{reason}; back-to-source is disabled")
                log.info("task %s: back to source (%s)", request.task_id, reason)
                trusted = await download_from_origin(ctx, job, view)
            job.set_state("verifying")
            if job.task is None:
                raise StoreError(f"task {request.task_id} ended without a store entry")
            if not job.task.complete:  # else: this host had that version already
                await ctx.on_disk(finish_verified, job.task, request.digest, trusted,
                                  cdn_sha256, False)
                self.syncs.later(job.task.task_id)
            job.store_id = job.task.task_id
            job.set_state("complete")
            self.stats.completed += 1
        except BaseException as exc:
            self.stats.failed += 1
            job.set_state("failed")
            corrupt = isinstance(exc, IntegrityError)
            if corrupt and job.task is not None and self._members.holds(job.task.task_id):
                await self.leave(job.task.task_id)  # we will not serve it after all
            raise
        finally:
            await ctx.quiesce()
            task, job.task = job.task, None
            if task is not None:
                if job.progress.state == "complete":  # the first caller takes it over
                    job.reservation, task.reservation = task.reservation, None
                elif not corrupt:
                    await _save_partial(ctx, task)
                task.close()
                if corrupt:
                    self.store.remove(task.task_id)  # nothing wrong may be served

    def _job_ended(self, job: Job, runner: asyncio.Task) -> None:
        if self._jobs.get(job.request.task_id) is job:
            del self._jobs[job.request.task_id]
        if not runner.cancelled():
            runner.exception()  # read: its waiters got it, or nobody is left to


async def _save_partial(ctx: Context, task: TaskFile) -> None:
    """Keep the digests of a partial task's verified pieces, so a later
    download (or a restart's store scan) can reuse them."""
    try:
        await ctx.on_disk(task.save_meta)
    except DamselflyError as exc:
        log.warning("could not save partial task %s: %s", task.task_id, exc)
