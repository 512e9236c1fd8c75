"""Restart: turn what the piece store holds back into servable versions.

After a restart the supernode serves its cache again without asking the
origin: every *complete* CDN task in the store (``meta.extra["identity"]``
names the identity it was fetched for) becomes the current version of that
identity. A partial task was a fetch cut short by the stop; we do not resume
it (its whole-file hash state is gone) and remove it, so the next
registration fetches afresh. If two complete versions of one identity
survived (the old one was still in use at the stop), the one validated last
wins and the other is removed.

Freshness carries over: a version validated ``age`` seconds ago (wall clock,
stored in the meta) is fresh for ``revalidate_after - age`` more seconds.
So does, roughly, the cache's least-recently-used order: the last use is
not stored (it would cost a write per registration), so a restored version
counts as last used when the origin last confirmed it, ``age`` seconds
before the restart, and so before anything registered after it.
"""

from __future__ import annotations

import logging
import math

from engine.errors import BadInput
from engine.meta import TaskMeta
from engine.store import PieceStore
from engine.types import TaskId
from supernode.origin import Validators
from supernode.versions import COMPLETE, Version

log = logging.getLogger(__name__)


def restore(store: PieceStore, now: float, wall: float, revalidate_after: float) -> list[Version]:
    """The versions to serve; removes partial and superseded CDN tasks from ``store``."""
    newest: dict[TaskId, TaskMeta] = {}
    for meta in store.scan():
        try:
            identity = TaskId(meta.extra.get("identity", ""))
        except BadInput:
            log.warning("task %s in the store is not a CDN task; ignored", meta.task_id)
            continue
        if meta.state != "complete":
            store.remove(meta.task_id)
            continue
        other = newest.get(identity)
        if other is not None and validated_at(other) > validated_at(meta):
            meta, other = other, meta
        if other is not None:
            store.remove(other.task_id)
        newest[identity] = meta
    out = []
    for identity, meta in newest.items():
        pinned = bool(meta.extra.get("pinned"))
        v = Version(meta.task_id, identity, pinned, meta.url, COMPLETE, meta.layout,
                    list(meta.piece_digests), meta.sha256,
                    Validators(meta.etag, meta.last_modified))
        v.fresh_until = math.inf if pinned else \
            now + validated_at(meta) + revalidate_after - wall
        v.used_at = now - max(0.0, wall - validated_at(meta))
        out.append(v)
    return out


def validated_at(meta: TaskMeta) -> float:
    """When the origin last confirmed this content (wall clock; 0 if never recorded)."""
    value = meta.extra.get("validated_at", 0.0)
    return float(value) if isinstance(value, (int, float)) else 0.0
