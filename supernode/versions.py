"""Task versions: what one URL identity currently means, and when to ask the origin again.

A *task identity* (engine.identity) names "this URL" (or this blob digest);
a *version* is one fetch of it: one store entry, one scheduler task, one id
that peers see in TaskView.task_id and in ``/pieces/<id>/<n>``. The first
version of an identity is named by the identity itself; every later one by
sha256(identity, random nonce).

Why versions instead of replacing a task in place: when the origin's content
changes while peers are mid-download, the old pieces must not mix with the
new ones. A new version is a new id, so its pieces live in a new store entry
and a new swarm; peers already on the old version finish it (the CDN keeps
serving it), and the old version is dropped once no peer is left in it.

``plan`` decides what a registration does with an identity (pure, so the
rules sit in one place and are tested without a network):

    no current version                          -> START a fetch
    current failed, within negative_ttl,
        and the failure applies to this request -> USE it (answer the error)
    current failed otherwise                    -> START again
    current pending or running                  -> USE (join the swarm)
    current complete and pinned by a digest     -> USE (content cannot change)
    current complete and still fresh            -> USE
    current complete and stale                  -> REVALIDATE (or JOIN the
                                                   revalidation already running)

A 401/403 failure belongs to the credentials that got it: it is remembered
with a fingerprint of the request (URL with its signature plus headers,
hashed, in memory only) and only answers requests with the same fingerprint,
so one peer's bad token does not lock out a peer with a good one.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from engine.messages import TaskView
from engine.pieces import PieceLayout
from engine.types import TaskId
from supernode.origin import Validators

PENDING, RUNNING, COMPLETE, FAILED = "pending", "running", "complete", "failed"
START, USE, REVALIDATE, JOIN = "start", "use", "revalidate", "join"
CREDENTIAL_STATUSES = (401, 403, 407)


@dataclass(slots=True, eq=False)
class Version:
    """One fetch of an identity. Mutated only by the service, on the event loop."""

    id: TaskId
    identity: TaskId
    pinned: bool
    url: str = ""                     # redacted (engine.meta.redact_url): safe to show
    state: str = PENDING
    layout: PieceLayout | None = None
    digests: list[str | None] = field(default_factory=list)
    sha256: str | None = None
    validators: Validators = Validators()
    fresh_until: float = math.inf     # service clock; only for complete versions
    error: str | None = None
    error_status: int | None = None
    error_kind: str | None = None     # the engine.errors class the fetch failed with
    failed_at: float = 0.0
    permanent: bool = True            # failed: tell peers "fail", else back_to_source
    fingerprint: str | None = None    # failed with 401/403: whose request got it
    request_fp: str = ""              # fingerprint of the request that started the fetch
    head: asyncio.Future | None = None  # a revalidation waiting for the origin's answer
    # A new fetch: resolved when its first piece lands or the fetch ends
    # (SupernodeService.register holds the first registrations until then).
    first_piece: asyncio.Future | None = None
    used_at: float = 0.0              # service clock: the last registration (cache LRU)

    def view(self) -> TaskView:
        layout = self.layout
        return TaskView(self.id, self.state,
                        layout.length if layout else None,
                        layout.piece_size if layout else None,
                        layout.count if layout else None,
                        self.sha256, self.error, self.error_status, self.error_kind)

    def learn_layout(self, layout: PieceLayout) -> None:
        self.layout = layout
        self.digests = [None] * layout.count
        self.state = RUNNING


@dataclass(slots=True, eq=False)
class Entry:
    """An identity and the versions that answer for it."""

    identity: TaskId
    current: Version | None = None
    candidate: Version | None = None  # a revalidation in flight, not yet current


def plan(entry: Entry, now: float, fingerprint: str, negative_ttl: float) -> str:
    """What a registration for ``entry`` does now (see the module docstring)."""
    cur = entry.current
    if cur is None:
        return START
    if cur.state == FAILED:
        fresh = now - cur.failed_at < negative_ttl
        applies = cur.fingerprint is None or cur.fingerprint == fingerprint
        return USE if fresh and applies else START
    if cur.state != COMPLETE or now < cur.fresh_until:
        return USE
    return JOIN if entry.candidate is not None else REVALIDATE


def over_quota(versions: Iterable[Version], quota: int,
               keep: Callable[[Version], bool]) -> list[Version]:
    """The complete versions to remove so that those left hold at most
    ``quota`` bytes: least recently registered first, never one ``keep``
    says must stay (a peer is registered for it, or a revalidation is
    deciding about it). May leave more than ``quota`` when too many must stay."""
    done = [v for v in versions if v.state == COMPLETE and v.layout is not None]
    size = sum(v.layout.length for v in done)
    out: list[Version] = []
    for v in sorted(done, key=lambda v: v.used_at):
        if size <= quota:
            break
        if not keep(v):
            out.append(v)
            size -= v.layout.length
    return out


def fingerprint(url: str, headers: dict[str, str]) -> str:
    """A one-way digest of what a request authenticates with; never stored."""
    items = sorted((k.lower(), v) for k, v in headers.items())
    return hashlib.sha256(orjson.dumps([url, items])).hexdigest()


def new_version_id(identity: TaskId, taken) -> TaskId:
    """The identity itself for the first version, else a fresh random name."""
    if identity not in taken:
        return identity
    return TaskId.of(identity.hex, "version", os.urandom(16).hex())
