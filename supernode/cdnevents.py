"""The CDN's progress, as the supernode service hears it (``cdn.CdnListener``).

A fetch tells the service what its origin said (``on_head``: a revalidation
decided), how the file is cut (``on_layout``), each piece as it lands and
is checked (``on_piece``: schedulable from that moment), and how it ended
(``on_complete``, ``on_failed``). Each becomes a change of the version
(supernode.versions) and events for the scheduler core.

``CdnEvents`` is the half of ``SupernodeService`` (supernode.service) that
implements these callbacks. It is mixed into the service rather than kept
beside it because it works on the service's own state: the versions and
their entries, the scheduler, the grant ledger, and ``_retire`` /
``_remove_data``, which drop what a failure makes stale. Runs on the
service's event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from engine.errors import DamselflyError, RemoteError, StoreError
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from supernode.config import SupernodeConfig
from supernode.ledger import GrantLedger
from supernode.origin import Validators
from supernode.scheduler import Scheduler
from supernode.versions import COMPLETE, CREDENTIAL_STATUSES, FAILED, Entry, Version

log = logging.getLogger(__name__)


class CdnEvents:
    """The ``CdnListener`` callbacks of the supernode service (see the module docstring)."""

    # What it uses of the service it is mixed into.
    config: SupernodeConfig
    store: PieceStore
    scheduler: Scheduler
    versions: dict[TaskId, Version]
    entries: dict[TaskId, Entry]
    counters: Counter[str]
    clock: Callable[[], float]
    wall: Callable[[], float]
    _ledger: GrantLedger
    _retire: Callable[[Version], None]
    _remove_data: Callable[[TaskId], None]
    _scheduler_state: Callable[[TaskId], str | None]

    def on_head(self, version: TaskId, modified: bool) -> None:
        v = self.versions.get(version)
        if v is None:
            return
        entry = self.entries[v.identity]
        if entry.candidate is v:
            entry.candidate = None
            if modified:
                old, entry.current = entry.current, v
                self._retire(old)
            else:
                self.versions.pop(v.id, None)
                self._mark_fresh(entry.current)
        _resolve(v.head)

    def on_layout(self, version: TaskId, layout: PieceLayout) -> None:
        v = self.versions[version]
        v.learn_layout(layout)
        self.scheduler.task_known(v.id, layout.count)

    def on_piece(self, version: TaskId, index: int, sha256: str) -> None:
        v = self.versions[version]
        v.digests[index] = sha256
        self.scheduler.piece_available(v.id, index)
        _resolve(v.first_piece)

    def on_complete(self, version: TaskId, meta: TaskMeta) -> None:
        v = self.versions[version]
        v.state, v.sha256 = COMPLETE, meta.sha256
        v.validators = Validators(meta.etag, meta.last_modified)
        v.fresh_until = math.inf if v.pinned else self.clock() + self.config.revalidate_after
        self.counters["fetches_complete"] += 1
        _resolve(v.first_piece)  # an empty file has no piece to land

    def on_failed(self, version: TaskId, error: DamselflyError) -> None:
        v = self.versions.get(version)
        if v is None:
            return
        status = getattr(error, "status", None)
        message = str(error)
        if v.url not in message:
            message = f"{message} (fetching {v.url})"
        v.state, v.error, v.error_status = FAILED, message, status
        v.error_kind = type(error).__name__
        v.failed_at = self.clock()
        v.permanent = isinstance(error, RemoteError)
        v.fingerprint = v.request_fp if status in CREDENTIAL_STATUSES else None
        self.counters["fetches_failed"] += 1
        entry = self.entries[v.identity]
        if entry.candidate is v:
            entry.candidate = None
            if status is None or status in CREDENTIAL_STATUSES:
                # Unreachable origin, or this peer's credentials: the cache
                # stays current; try the origin again after negative_ttl.
                entry.current.fresh_until = v.failed_at + self.config.negative_ttl
            else:
                old, entry.current = entry.current, v  # the origin now refuses the file
                self._retire(old)
        members: list[tuple[PeerId, str]] = []
        if self._scheduler_state(v.id) == COMPLETE:
            # Every piece had landed but the whole file failed (an expected
            # digest). The core has no complete -> failed edge, so the swarm
            # is rebuilt as failed with the same peers, who are then told.
            members = [(p, self.scheduler.addr(p)) for p in self.scheduler.peers(v.id)]
            self.scheduler.forget_task(v.id)
            self._ledger.forget_task(v.id)
        self.scheduler.task_failed(v.id, v.error, permanent=v.permanent)
        for peer, addr in members:
            self.scheduler.register(v.id, peer, addr=addr)
        try:
            self._remove_data(v.id)
        except StoreError as exc:
            log.warning("could not remove failed task %s: %s", v.id, exc)
        _resolve(v.head)
        _resolve(v.first_piece)

    def _mark_fresh(self, v: Version) -> None:
        v.fresh_until = self.clock() + self.config.revalidate_after
        try:
            task = self.store.open(v.id)
        except StoreError as exc:
            log.warning("cannot record revalidation of %s: %s", v.id, exc)
            return
        try:
            task.meta = replace(task.meta, extra={**task.meta.extra, "validated_at": self.wall()})
            task.save_meta()
        except DamselflyError as exc:
            log.warning("cannot record revalidation of %s: %s", v.id, exc)
        finally:
            task.close()


def _resolve(future: asyncio.Future | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
