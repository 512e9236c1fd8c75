"""This peer's standing with the supernodes, for every task it serves.

A supernode schedules a task for this peer from the moment the peer
registers for it (or announces it) until the peer leaves it. ``Memberships``
keeps which supernode that is for each task (by its name in the store, the
supernode's version id), and while there is any, or a download runs, a
heartbeat goes to each of those supernodes every ``heartbeat_interval``
seconds (a sleeping task: a peer that never registered runs nothing at all).

Seeding again. A task complete in the store is answered locally, without a
word to any supernode, so after a restart nobody would know this host holds
it: ``announce_cached`` offers each complete task to the supernodes in turn
until one that has that version whole takes it (one that never saw it
answers 404). And a supernode that answers a heartbeat with 404 has lost
this peer (it restarted): the complete tasks it scheduled are offered to it
again; a download still running registers again by itself.

Best effort throughout: supernode errors are logged, never raised. One event
loop owns it; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from engine.download.rpc import RpcClient
from engine.download.supernodes import Refused, announce, heartbeat, leave
from engine.errors import SupernodeError
from engine.messages import Announce, PeerInfo
from engine.meta import TaskMeta
from engine.store import PieceStore
from engine.types import TaskId

log = logging.getLogger(__name__)


class Memberships:
    """See the module docstring. ``busy()`` says whether downloads run (the
    heartbeat then goes on with no task registered yet)."""

    def __init__(self, store: PieceStore, supernodes: list[str], peer: PeerInfo,
                 rpc: RpcClient, *, rpc_timeout: float, heartbeat_interval: float,
                 busy: Callable[[], bool]) -> None:
        self.store, self.supernodes, self.peer, self._rpc = store, supernodes, peer, rpc
        self.rpc_timeout, self.heartbeat_interval = rpc_timeout, heartbeat_interval
        self._busy = busy
        self._nodes: dict[TaskId, str] = {}  # supernode each task is registered with
        self._heartbeat: asyncio.Task | None = None
        self._closed = False

    @property
    def heartbeating(self) -> bool:
        """True while a heartbeat task runs (this peer downloads or seeds something)."""
        return self._heartbeat is not None

    def holds(self, store_id: TaskId) -> bool:
        """True if a supernode schedules ``store_id`` for this peer."""
        return store_id in self._nodes

    def registered(self, store_id: TaskId, node: str) -> None:
        """``node`` schedules ``store_id`` for this peer: heartbeat it, leave it at the end."""
        self._nodes[store_id] = node
        if self._heartbeat is None and not self._closed:
            self._heartbeat = asyncio.create_task(self._beat(), name="heartbeat")

    async def leave(self, task_id: TaskId | None = None) -> None:
        """Tell the supernode this peer no longer serves ``task_id`` (None: any task).

        When nothing is left to serve and no download runs, the heartbeat stops.
        """
        tasks = [task_id] if task_id is not None else list(self._nodes)
        nodes = {self._nodes.pop(t) for t in tasks if t in self._nodes}
        for node in nodes:
            try:
                await leave(self._rpc, node, self.peer.peer_id, task_id, self.rpc_timeout)
            except SupernodeError as exc:
                log.info("leave: %s", exc)
        if not self._nodes and not self._busy():
            await self._stop_heartbeat()

    async def close(self) -> None:
        """Leave every task (bounded by ``rpc_timeout``) and stop the heartbeat for good."""
        self._closed = True
        if self._nodes:
            try:
                async with asyncio.timeout(self.rpc_timeout):
                    await self.leave(None)
            except TimeoutError:
                log.info("leaving the supernodes timed out")
        await self._stop_heartbeat()

    async def announce_cached(self) -> int:
        """Offer the complete tasks already in the store to the supernodes; how many took."""
        try:
            metas = await asyncio.to_thread(self.store.complete_tasks)
        except OSError as exc:
            log.warning("cannot list the store to announce it: %s", exc)
            return 0
        taken = 0
        for meta in metas:
            if meta.task_id not in self._nodes:
                taken += await self._offer(meta, self.supernodes)
        if metas:
            log.info("announced %d of %d cached task(s)", taken, len(metas))
        return taken

    async def _offer(self, meta: TaskMeta, nodes: list[str]) -> bool:
        """Announce the complete task ``meta`` to ``nodes`` in turn; True once one took it."""
        msg = Announce(self.peer, meta.task_id, meta.sha256)
        for node in nodes:
            try:
                await announce(self._rpc, node, msg, self.rpc_timeout)
            except Refused as exc:
                log.debug("announce %s to %s: %s", meta.task_id, node, exc)
                continue
            except SupernodeError as exc:
                log.info("announce %s to %s: %s", meta.task_id, node, exc)
                continue
            self.registered(meta.task_id, node)
            return True
        return False

    async def _offer_again(self, node: str) -> None:
        """``node`` no longer knows this peer: announce again the complete tasks it
        scheduled for us; the ones it refuses stop being its."""
        theirs = {t for t, n in self._nodes.items() if n == node}
        for meta in await asyncio.to_thread(self.store.complete_tasks):
            if meta.task_id in theirs:
                del self._nodes[meta.task_id]
                if not await self._offer(meta, [node]):
                    log.info("supernode %s no longer takes task %s", node, meta.task_id)

    async def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for node in set(self._nodes.values()):
                try:
                    await heartbeat(self._rpc, node, self.peer, self.rpc_timeout)
                except Refused as exc:
                    log.info("heartbeat: %s", exc)
                    if exc.status == 404:
                        await self._offer_again(node)
                except SupernodeError as exc:
                    log.info("heartbeat: %s", exc)
