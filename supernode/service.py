"""The supernode service: wire messages in, scheduler events and CDN fetches out.

This is the glue between three parts that know nothing of each other: the
HTTP API (supernode.api) hands it validated messages; it maps identities to
versions (supernode.versions), feeds the sans-IO scheduler core events, and
starts CDN fetches, whose progress comes back through the ``CdnListener``
methods (supernode.cdnevents, mixed in) and becomes scheduler events in turn.

Not thread-safe: everything runs on one event loop, and no method awaits
while it holds a half-made change, so each call applies atomically with
respect to the others. ``register`` awaits only while a revalidation asks the
origin whether a cached file changed (bounded by ``revalidate_timeout``).

Result reports are checked before any is applied (supernode.reports), so a
bad batch changes nothing.

Failures: an origin that refuses or breaks (OriginError, IntegrityError)
makes the version fail for good and every peer gets ``fail`` with the
message and status; a failure on our side (disk full, store trouble) makes
peers go ``back_to_source``. Failed versions are remembered for
``negative_ttl`` (see versions.plan) and then dropped with their data.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from random import Random

from engine.errors import BadInput
from engine.identity import TaskIdentity
from engine.messages import (
    Announce, Assignment, Heartbeat, Leave, RegisterRequest, ScheduleRequest, ScheduleResponse,
    TaskView)
from engine.meta import redact_url
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from supernode.cdn import Cdn, FetchRequest, RetryPolicy
from supernode.cdnevents import CdnEvents
from supernode.config import SupernodeConfig
from supernode.ledger import GrantLedger
from supernode.origin import OriginClient, Validators
from supernode.reports import check_results
from supernode.restore import restore
from supernode.scheduler import DONE, Decision, Scheduler, UnknownPeer, UnknownTask
from supernode.versions import (
    COMPLETE, FAILED, JOIN, REVALIDATE, START, Entry, Version,
    fingerprint, new_version_id, over_quota, plan)

log = logging.getLogger(__name__)
CDN_PEER = PeerId("cdn")
DIGEST_WAIT_MS = 50
# How long a registration for a file the CDN has just started fetching waits
# for its first piece, so that the peer's first schedule call finds
# something to fetch instead of a wait_ms hint (100-300 ms jittered).
FIRST_PIECE_WAIT = 1.0  # seconds


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class SupernodeService(CdnEvents):
    """See the module docstring. Use as an async context manager."""

    def __init__(self, config: SupernodeConfig, store: PieceStore, origin: OriginClient, *,
                 cdn_addr: str, forget: Callable[[TaskId], None] = lambda _t: None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, rng: Random | None = None) -> None:
        self.config, self.store, self.origin = config, store, origin
        self.clock, self.wall = clock, wall
        self.scheduler = Scheduler(config.scheduler(), clock=clock, rng=rng or Random(),
                                   cdn=CDN_PEER, cdn_addr=cdn_addr)
        self.cdn = Cdn(store, origin, self,
                       RetryPolicy(config.origin_retries, config.origin_retry_backoff), wall)
        self._forget_upload = forget
        self.entries: dict[TaskId, Entry] = {}
        self.versions: dict[TaskId, Version] = {}
        self._retired: set[Version] = set()  # replaced; dropped when no peer is left
        self._ledger = GrantLedger()
        self.counters: Counter[str] = Counter()

    async def __aenter__(self) -> SupernodeService:
        await self.cdn.__aenter__()
        self.load()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.cdn.close()
        for v in self.versions.values():
            for waiting in (v.head, v.first_piece):
                if waiting is not None and not waiting.done():
                    waiting.cancel()

    # --- restart ---------------------------------------------------------------

    def load(self) -> None:
        """Serve again what a previous run cached (see supernode.restore)."""
        for v in restore(self.store, self.clock(), self.wall(), self.config.revalidate_after):
            self.versions[v.id] = v
            self.entries[v.identity] = Entry(v.identity, v)
            self.scheduler.task_known(v.id, v.layout.count)
            for index in range(v.layout.count):
                self.scheduler.piece_available(v.id, index)
        log.info("serving %d cached task(s) from %s", len(self.entries), self.store.root)

    # --- peer requests -----------------------------------------------------------

    async def register(self, req: RegisterRequest) -> TaskView:
        if req.peer.peer_id == CDN_PEER:  # refused before any fetch starts
            raise BadInput(f"peer id {CDN_PEER} is the CDN's own")
        ident = TaskIdentity.of(req.url, tag=req.tag, digest=req.digest,
                                filter_params=req.filter_params)
        self.counters["registrations"] += 1
        entry = self.entries.get(ident.task_id)
        if entry is None:
            entry = self.entries[ident.task_id] = Entry(ident.task_id)
        fp = fingerprint(req.url, req.headers)
        step = plan(entry, self.clock(), fp, self.config.negative_ttl)
        if step == START:
            version = self._start(entry, ident, req, fp)
        elif step in (REVALIDATE, JOIN):
            version = await self._revalidate(entry, ident, req, fp, step)
        else:
            version = entry.current
        if version.first_piece is not None and not version.first_piece.done():
            try:
                await asyncio.wait_for(asyncio.shield(version.first_piece), FIRST_PIECE_WAIT)
            except TimeoutError:
                pass  # a slow origin: the peer asks again after the usual waits
        version.used_at = self.clock()
        peer = req.peer
        self.scheduler.register(version.id, peer.peer_id, location=peer.location,
                                addr=host_port(peer.ip, peer.port))
        return version.view()

    def schedule(self, req: ScheduleRequest) -> ScheduleResponse:
        v = self._version(req.task_id)
        self.counters["schedules"] += 1
        peer = req.peer_id
        try:
            self._apply_results(v, req)
        except BadInput:
            if v.state != FAILED:
                raise
            # Stale: the whole file failed its digest after every piece had
            # landed, and its swarm was rebuilt as failed without them
            # (cdnevents.on_failed). The answer below is that failure.
        decision = self.scheduler.schedule(v.id, req.peer_id, req.want)
        if decision.action == DONE and v.state != COMPLETE:
            # Every piece matched its digest, but "done" also promises the
            # whole-file sha256, which exists only once the CDN has checked
            # the whole file (and an expected digest may still fail it).
            decision = (Decision.wait(DIGEST_WAIT_MS, "the CDN is finishing the file digest")
                        if v.state != FAILED else
                        Decision.fail(v.error) if v.permanent else
                        Decision.back_to_source(v.error))
        assignments = tuple(
            Assignment(g.piece, g.source, self.scheduler.addr(g.source),
                       v.layout.size_of(g.piece), v.digests[g.piece], g.source == CDN_PEER)
            for g in decision.grants)
        for g in decision.grants:
            self._ledger.grant(v.id, peer, g.piece, g.source)
        self.counters["assignments"] += len(assignments)
        return ScheduleResponse(decision.action, v.view(), assignments, decision.wait_ms,
                                decision.message)

    def _apply_results(self, v: Version, req: ScheduleRequest) -> None:
        peer = req.peer_id
        done, failed = check_results(v, req, self._ledger, self.scheduler)
        if done:
            self.scheduler.pieces_done(v.id, peer, done)
        for piece, source, reason in failed:
            self.scheduler.piece_failed(v.id, peer, piece, source, reason)
        for r in req.results:
            self._ledger.settle(v.id, peer, r.piece, r.source, r.ok)

    def announce(self, msg: Announce) -> TaskView:
        """``msg.peer`` holds all of a task this supernode has whole: it becomes
        a seed at once (a restarted daemon re-offering its store).

        Only a version whose whole file the CDN has checked is accepted, and
        only with the same sha256: a peer cannot introduce content, only
        offer a copy of what the supernode already vouches for. A peer that
        lies about holding it is isolated like any source that fails.
        """
        v = self.versions.get(msg.task_id)
        if v is None:
            raise UnknownTask(f"task {msg.task_id} is not known here")
        if v.state != COMPLETE:
            raise BadInput(f"task {msg.task_id} is not complete here yet")
        if v in self._retired:
            # Nobody new is sent to a replaced version; a seed would only
            # keep it (and its CDN copy) alive.
            raise BadInput(f"task {msg.task_id} was replaced by a newer version")
        if v.sha256 != msg.sha256:
            raise BadInput(f"task {msg.task_id} has another sha256 here")
        peer = msg.peer
        self.scheduler.register(v.id, peer.peer_id, location=peer.location,
                                addr=host_port(peer.ip, peer.port))
        self.scheduler.pieces_done(v.id, peer.peer_id,
                                   [(i, None) for i in range(v.layout.count)])
        v.used_at = self.clock()
        self.counters["announces"] += 1
        return v.view()

    def heartbeat(self, hb: Heartbeat) -> None:
        self.scheduler.heartbeat(hb.peer_id)

    def leave(self, msg: Leave) -> None:
        if msg.task_id is not None:
            self._version(msg.task_id)
        if not self.scheduler.leave(msg.peer_id, msg.task_id):
            raise UnknownPeer(f"peer {msg.peer_id} is not registered"
                              + (f" in task {msg.task_id}" if msg.task_id else ""))
        self._ledger.forget_peer(msg.peer_id, msg.task_id)

    def task_view(self, task_id: TaskId) -> TaskView:
        """A version by its id, or the current version of an identity."""
        v = self.versions.get(task_id)
        if v is None:
            entry = self.entries.get(task_id)
            v = entry.current if entry is not None else None
        if v is None:
            raise UnknownTask(f"task {task_id} is not known here")
        return v.view()

    def _version(self, task_id: TaskId) -> Version:
        v = self.versions.get(task_id)
        if v is None:
            raise UnknownTask(f"task {task_id} is not known here (register first)")
        return v

    # --- versions ------------------------------------------------------------------

    def _start(self, entry: Entry, ident: TaskIdentity, req: RegisterRequest, fp: str,
               revalidate: Validators | None = None) -> Version:
        v = Version(new_version_id(ident.task_id, self.versions), ident.task_id, ident.pinned,
                    redact_url(req.url), request_fp=fp)
        self.versions[v.id] = v
        if revalidate is None:
            old, entry.current = entry.current, v
            if old is not None:
                self._retire(old)
            v.first_piece = asyncio.get_running_loop().create_future()
        else:
            entry.candidate = v
            v.head = asyncio.get_running_loop().create_future()
        self.counters["fetches"] += 1
        self.cdn.start(FetchRequest(v.id, ident, req.url, dict(req.headers), revalidate))
        return v

    async def _revalidate(self, entry: Entry, ident: TaskIdentity, req: RegisterRequest,
                          fp: str, step: str) -> Version:
        if step == REVALIDATE:
            cand = self._start(entry, ident, req, fp, revalidate=entry.current.validators)
        else:
            cand = entry.candidate
        try:
            await asyncio.wait_for(asyncio.shield(cand.head), self.config.revalidate_timeout)
        except asyncio.TimeoutError:
            log.warning("revalidation of %s is slow; serving the cached version", ident.task_id)
        # A credential failure answers only the request that earned it.
        if cand.state == FAILED and cand.fingerprint == fp and entry.current is not cand:
            return cand
        return entry.current

    def _retire(self, v: Version) -> None:
        if v.state == FAILED:
            self._drop(v)
        else:
            self._retired.add(v)

    def _drop(self, v: Version) -> None:
        """Forget a version entirely: scheduler task, store entry, open handles."""
        self.versions.pop(v.id, None)
        self._retired.discard(v)
        self.scheduler.forget_task(v.id)
        self._ledger.forget_task(v.id)
        self._remove_data(v.id)

    def _remove_data(self, task_id: TaskId) -> None:
        self._forget_upload(task_id)
        self.store.remove(task_id)

    def _scheduler_state(self, task_id: TaskId) -> str | None:
        try:
            return self.scheduler.task_state(task_id)
        except UnknownTask:
            return None

    def _has_peers(self, task_id: TaskId) -> bool:
        try:
            return bool(self.scheduler.peers(task_id))
        except UnknownTask:
            return False

    def tick(self) -> None:
        """Clock tick: expire assignments and silent peers, drop unused versions."""
        for peer in self.scheduler.tick().dropped:
            self._ledger.forget_peer(peer)
        now = self.clock()
        for v in list(self._retired):
            if not self._has_peers(v.id):
                self._drop(v)
        for v in [v for v in self.versions.values() if v.state == FAILED]:
            if now - v.failed_at < self.config.negative_ttl or self._has_peers(v.id):
                continue
            entry = self.entries.get(v.identity)
            if entry is not None and entry.current is v:
                entry.current = None
                if entry.candidate is None:
                    del self.entries[v.identity]
            self._drop(v)
        self._keep_quota()

    def _keep_quota(self) -> None:
        """Keep the cache under ``cache_quota_mib`` (supernode.versions.over_quota)."""
        quota = self.config.cache_quota_mib << 20
        if not quota:
            return
        for v in over_quota(list(self.versions.values()), quota, self._keeps):
            entry = self.entries.get(v.identity)
            if entry is not None and entry.current is v:
                del self.entries[v.identity]
            log.info("cache over its quota: removing %s (%d bytes)", v.url, v.layout.length)
            self._drop(v)
            self.counters["cache_evictions"] += 1

    def _keeps(self, v: Version) -> bool:
        """A file a peer is registered for (its swarm may need the CDN's copy),
        or one a revalidation is deciding about, stays whatever the quota."""
        entry = self.entries.get(v.identity)
        return self._has_peers(v.id) or (entry is not None and entry.candidate is not None)

    def metrics(self) -> dict[str, int]:
        states = Counter(v.state for v in self.versions.values())
        out = {f"versions_{s}": states.get(s, 0) for s in ("pending", "running", "complete",
                                                           "failed")}
        out.update(self.counters)
        out["origin_requests"] = self.origin.requests
        out["origin_bytes"] = self.origin.bytes
        out.update({f"scheduler_{k}": n for k, n in self.scheduler.stats().items()})
        return out

