"""What the download paths share: the Downloader's resources and one job's state.

``Context`` is the Downloader's toolbox (store, HTTP session for origins,
supernode client, peer connection pool, the disk, hash and export threads,
counters, tunables), handed to the P2P and origin paths so that they stay
plain functions.
``Job`` is one task being downloaded in this process; every ``download()``
call for the task waits on the same job. Both belong to one event loop and
are not thread-safe, except that the disk thread may run store calls on
``Job.task`` (one at a time) and the three threads run the jobs of
engine.download.sinks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import aiohttp

from engine.diskspace import Reservation
from engine.download.fetch import ConnectionPool
from engine.download.output import OutputFile
from engine.download.rpc import RpcClient
from engine.download.request import DownloadRequest, DownloadStats, Progress
from engine.download.sinks import BouncePool
from engine.messages import PeerInfo
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import TaskId
from engine.upload import Pacer

log = logging.getLogger(__name__)
ProgressCallback = Callable[[Progress], None]


@dataclass(slots=True)
class Context:
    store: PieceStore
    supernodes: list[str]
    peer: PeerInfo
    session: aiohttp.ClientSession  # origins (back-to-source)
    rpc: RpcClient                  # supernodes
    pool: ConnectionPool
    disk: ThreadPoolExecutor
    hasher: ThreadPoolExecutor  # hashes received pieces (engine.download.sinks)
    export: ThreadPoolExecutor  # writes output files (engine.download.output)
    stats: DownloadStats
    parallel: int = 4
    pacer: Pacer | None = None
    piece_timeout: float = 30.0
    min_rate: float = 1 << 20  # bytes/s a piece fetch may not fall below (timeout)
    receive: str = "pwrite"  # or "mmap": see engine.download.sinks
    rpc_timeout: float = 10.0
    origin_connect_timeout: float = 10.0
    origin_read_timeout: float = 60.0
    on_registered: Callable[[TaskId, str | None], None] = lambda task_id, node: None
    bounce: BouncePool = field(default_factory=BouncePool)

    async def on_disk(self, fn, *args):
        """Run a store call on the disk thread."""
        return await asyncio.get_running_loop().run_in_executor(self.disk, fn, *args)

    async def quiesce(self) -> None:
        """Wait until the disk, hash and export threads have run everything
        queued so far.

        A cancelled ``on_disk`` await does not stop the thread: a commit may
        still be hashing a piece through the mmap, a sink's buffer may still
        be on its way to the task file or an output, and closing the
        TaskFile (or an output) under them would fail. Call this before
        closing a task.
        """
        loop = asyncio.get_running_loop()
        await asyncio.gather(self.on_disk(_nothing), loop.run_in_executor(self.hasher, _nothing),
                             loop.run_in_executor(self.export, _nothing))


def _nothing() -> None:
    return None


@dataclass(eq=False, slots=True)
class Job:
    """One task being downloaded; joined by every caller that wants it."""

    request: DownloadRequest
    progress: Progress
    callbacks: list[ProgressCallback] = field(default_factory=list)
    task: TaskFile | None = None
    runner: asyncio.Task | None = None
    waiters: int = 0
    reservation: Reservation | None = None
    store_id: TaskId | None = None  # the finished task's name in the store
    pacer: Pacer | None = None      # the first caller's own limit, if any
    # Output files of the callers, written while pieces arrive (engine.
    # download.output); a sink takes the list as it is when it starts.
    outputs: list[OutputFile] = field(default_factory=list)
    # Whether the first caller's output is a copy (its space is checked and
    # held with the task's, engine.store.PieceStore.create) or a hard link.
    output_copy: bool = True

    def set_task(self, task: TaskFile) -> None:
        """Adopt ``task`` (closing a previous one) and count what it already holds."""
        if self.task is not None and self.task is not task:
            self.task.close()
        self.task = task
        layout = task.layout
        have = task.bitmap.indices()
        p = self.progress
        p.length, p.piece_count = layout.length, layout.count
        p.pieces_done = len(have)
        p.done_bytes = sum(layout.size_of(i) for i in have)
        self.notify()

    def drop_task(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None

    def set_state(self, state: str) -> None:
        if self.progress.state != state:
            self.progress.state = state
            self.notify()

    def piece_done(self, nbytes: int, origin: str) -> None:
        """A piece of ``nbytes`` landed; ``origin`` is peers, cdn or origin."""
        p = self.progress
        p.pieces_done += 1
        p.done_bytes += nbytes
        if origin == "peers":
            p.from_peers += nbytes
        elif origin == "cdn":
            p.from_cdn += nbytes
        else:
            p.from_origin += nbytes
        self.notify()

    def notify(self) -> None:
        if not self.callbacks:
            return
        snapshot = self.progress.copy()
        for callback in list(self.callbacks):
            try:
                callback(snapshot)
            except Exception:  # a broken watcher must not break the download
                log.exception("progress callback failed; dropping it")
                self.callbacks.remove(callback)
