"""The CDN: one streaming back-to-source download per task version, into the piece store.

Theory of operation. The service asks for a fetch of one *version* (a store
entry and a scheduler task, named by its own TaskId) and gets events back
through a ``CdnListener``, all on the event loop:

    on_head(v, modified)   the origin answered; False means 304 Not Modified
                           (only for a revalidation: the fetch ends there)
    on_layout(v, layout)   the length is known and the store entry exists
    on_piece(v, i, sha)    piece i is verified in the store and servable
    on_complete(v, meta)   every piece is in, the whole-file sha256 is known
    on_failed(v, error)    the fetch gave up; nothing more will come

Exactly one of on_complete / on_failed ends every fetch, except a 304, which
ends after on_head(v, False). The CDN never removes store entries; the
service, which knows whether peers still use a version, does.

Resuming. A body that breaks off (BrokenByPeer: reset, timeout, fewer bytes
than announced) is resumed with ``Range: bytes=N-`` and ``If-Range``; a 206
must start at N and agree on the total and the validators. An origin that
ignores Range answers 200 from byte 0: the bytes we hold are then compared
with the new ones (see supernode.sinks). An origin that sends neither ETag
nor Last-Modified is always read again from byte 0, because If-Range needs a
validator and without it a 206 could be the tail of another version. Connection failures and 5xx answers are
retried too. Every retry counts against one budget per fetch, with
exponential backoff; past it the fetch fails with an OriginError.

Secrets. The peer's headers live only in the ``FetchRequest`` and are
dropped when the fetch ends; the store gets the redacted URL only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from engine.errors import BrokenByPeer, DamselflyError, IntegrityError, OriginError
from engine.identity import TaskIdentity
from engine.lazysync import LazySyncs
from engine.meta import TaskMeta, redact_url
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import TaskId
from supernode.origin import Head, OriginClient, Response, Validators
from supernode.sinks import Hashers, PieceSink, SpoolSink

log = logging.getLogger(__name__)


class CdnListener(Protocol):
    def on_head(self, version: TaskId, modified: bool) -> None: ...
    def on_layout(self, version: TaskId, layout: PieceLayout) -> None: ...
    def on_piece(self, version: TaskId, index: int, sha256: str) -> None: ...
    def on_complete(self, version: TaskId, meta: TaskMeta) -> None: ...
    def on_failed(self, version: TaskId, error: DamselflyError) -> None: ...


# The CDN writes through the page cache, so syncing a version it has just
# fetched writes all of it back while the swarm is pulling it (in the lab, on
# the one disk every host writes to: a stall for all of them). Its cache only
# has to outlive a restart, and a restart checks every piece of a version
# whose sync had not happened yet (engine.store.PieceStore.scan), so the sync
# can wait until the swarm has most likely moved on.
CDN_SYNC_DELAY = 60.0


@dataclass(slots=True)
class FetchRequest:
    """One version to fetch. ``headers`` may hold secrets: memory only."""

    version: TaskId
    identity: TaskIdentity
    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    revalidate: Validators | None = None  # a conditional GET against this


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 3
    backoff: float = 0.2  # first pause; doubles each retry

    def pause(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1)


class Cdn:
    """Runs fetches; owns the hashing thread. Use as an async context manager."""

    def __init__(self, store: PieceStore, origin: OriginClient, listener: CdnListener,
                 retry: RetryPolicy = RetryPolicy(), wall: Callable[[], float] = time.time) -> None:
        self.store, self.origin, self.listener, self.retry = store, origin, listener, retry
        self.wall = wall  # stamps meta["validated_at"]; injectable with the service's clock
        self.spool_dir = os.path.join(store.root, "spool")
        self._hashers = Hashers()
        self._fetches: dict[TaskId, asyncio.Task] = {}
        # Complete versions are synced later (engine.lazysync), on the thread
        # that wrote them: CDN_SYNC_DELAY says why so much later.
        self.syncs = LazySyncs(store, self._hashers.ordered, CDN_SYNC_DELAY)

    async def __aenter__(self) -> Cdn:
        # Spools of a previous run belong to fetches that no longer exist.
        if os.path.isdir(self.spool_dir):
            for name in os.listdir(self.spool_dir):
                os.unlink(os.path.join(self.spool_dir, name))
        os.makedirs(self.spool_dir, exist_ok=True)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        fetches = list(self._fetches.values())
        for task in fetches:
            task.cancel()
        await asyncio.gather(*fetches, return_exceptions=True)
        await self.syncs.flush()
        self._hashers.shutdown()

    def start(self, request: FetchRequest) -> None:
        if request.version in self._fetches:
            raise RuntimeError(f"a fetch of {request.version} is already running")
        task = asyncio.create_task(_Fetch(self, request).run(), name=f"cdn {request.version}")
        self._fetches[request.version] = task
        task.add_done_callback(lambda _t: self._fetches.pop(request.version, None))


class _Fetch:
    """The state of one fetch; lives as long as its asyncio task."""

    def __init__(self, cdn: Cdn, request: FetchRequest) -> None:
        self.cdn, self.req = cdn, request
        self.v = request.version
        self.attempts = 0
        self.resp: Response | None = None  # the open origin response, if any
        self.task: TaskFile | None = None
        self.sink: PieceSink | None = None
        self.spool: SpoolSink | None = None

    async def run(self) -> None:
        try:
            await self._run()
        except DamselflyError as exc:
            log.warning("CDN fetch of %s (%s) failed: %s", self.v, redact_url(self.req.url), exc)
            self._report_failure(exc)
        except Exception as exc:
            # A bug must still end the fetch visibly, or every waiting peer hangs.
            log.exception("CDN fetch of %s crashed", self.v)
            self._report_failure(DamselflyError(f"CDN internal error: {type(exc).__name__}"))
        finally:
            if self.resp is not None:
                self.resp.close()
            if self.sink is not None:
                self.sink.settle()
            if self.task is not None:
                self.task.close()
            if self.spool is not None:
                self.spool.close()
            self.req.headers = {}  # the secrets go as soon as the origin is done with

    def _report_failure(self, error: DamselflyError) -> None:
        try:
            self.cdn.listener.on_failed(self.v, error)
        except Exception:
            log.exception("the CDN listener failed to take the failure of %s", self.v)

    async def _run(self) -> None:
        head = (await self._open(0, conditional=self.req.revalidate)).head
        if head.status == 304:
            self.cdn.listener.on_head(self.v, False)
            return
        if head.status != 200:
            raise OriginError(f"origin answered {head.status} to a plain GET", head.status)
        self.cdn.listener.on_head(self.v, True)
        validators, length = head.validators, head.length
        if length is not None:
            self._create(length, validators)
        else:
            self.spool = SpoolSink(os.path.join(self.cdn.spool_dir, self.v.hex))
        await self._pump(length, validators)
        if self.spool is not None:
            self._create(self.spool.offset, validators)
            self.sink.fill_from(self.spool.fd)
        sha256 = await self.sink.finish()
        self._check_expected(sha256)
        # Not on the loop (it writes the meta); the sync comes later.
        await self.sink.run_ordered(lambda: self.task.finish(sha256, rehash=False,
                                                             durable=False))
        self.cdn.syncs.later(self.v)
        self.cdn.listener.on_complete(self.v, self.task.meta)

    def _create(self, length: int, validators: Validators) -> None:
        ident = self.req.identity
        layout = PieceLayout.for_length(length)
        meta = TaskMeta.new(self.v, self.req.url, layout, etag=validators.etag,
                            last_modified=validators.last_modified,
                            extra={"identity": ident.task_id.hex, "validated_at": self.cdn.wall(),
                                   "pinned": ident.pinned})
        self.task = self.cdn.store.create(meta, output_copy=False)
        expected = ident.digest or ident.blob_digest
        extra = expected.hasher() if expected and expected.algorithm != "sha256" else None
        self.sink = PieceSink(self.task, self.cdn._hashers,
                              lambda i, sha: self.cdn.listener.on_piece(self.v, i, sha), extra)
        self.cdn.listener.on_layout(self.v, layout)

    def _check_expected(self, sha256: str) -> None:
        ident = self.req.identity
        expected = ident.digest or ident.blob_digest
        if expected is None:
            return
        if expected.algorithm == "sha256":
            if expected.hex != sha256:
                raise IntegrityError(f"origin content has sha256:{sha256}, expected {expected}")
        else:
            self.sink.check_extra(expected.hex, str(expected))

    async def _open(self, start: int, conditional: Validators | None = None,
                    if_range: str | None = None) -> Response:
        """One GET (kept in self.resp), retried on connection failures and 5xx."""
        if self.resp is not None:
            self.resp.close()
            self.resp = None
        while True:
            try:
                self.resp = await self.cdn.origin.get(
                    self.req.url, self.req.headers, start=start, if_range=if_range,
                    conditional=conditional)
                return self.resp
            except BrokenByPeer as exc:
                await self._retry_or_raise(exc)
            except OriginError as exc:
                if exc.status is None or exc.status < 500:
                    raise
                await self._retry_or_raise(exc)

    async def _retry_or_raise(self, exc: DamselflyError) -> None:
        self.attempts += 1
        if self.attempts > self.cdn.retry.retries:
            status = getattr(exc, "status", None)
            raise OriginError(f"{exc} (gave up after {self.attempts} attempts)", status) from exc
        log.info("origin trouble for %s (%s); retry %d", self.v, exc, self.attempts)
        await asyncio.sleep(self.cdn.retry.pause(self.attempts))

    async def _pump(self, length: int | None, validators: Validators) -> None:
        """Move the body of self.resp into the sink, resuming as needed."""
        sink = self.sink or self.spool
        pos = 0
        while True:
            try:
                while chunk := await self.resp.read():
                    sink.feed(pos, chunk)
                    pos += len(chunk)
                if length is not None and pos < length:
                    raise BrokenByPeer(f"origin body ended at {pos} of {length} bytes")
                if pos < sink.offset:
                    raise OriginError("origin content changed during the download (shorter)")
                self.resp.close()
                self.resp = None
                return
            except BrokenByPeer as exc:
                self.resp.close()
                total = "an unknown number of" if length is None else str(length)
                await self._retry_or_raise(BrokenByPeer(
                    f"{exc}; the origin body broke off at byte {sink.offset} of {total} bytes"))
                # Without a validator a 206 could splice another version onto
                # ours unnoticed, so such an origin is read again from byte 0
                # and the bytes we hold are compared instead.
                resume_at = sink.offset if validators.if_range else 0
                await self._open(resume_at, if_range=validators.if_range)
                pos = _resume_position(self.resp.head, resume_at, length, validators)


def _resume_position(head: Head, offset: int, length: int | None,
                     validators: Validators) -> int:
    """Where the resumed response's body starts, or OriginError if it is another version."""
    if validators.contradicts(head.validators):
        raise OriginError("origin content changed during the download (validators differ)")
    if head.status == 206:
        if head.range_start != offset or length is not None and head.range_total != length:
            raise OriginError(f"origin answered a resume at {offset} with a wrong Content-Range")
        return offset
    # 200: no Range support (or If-Range saw a change): the body restarts at 0.
    if length is not None and head.length != length:
        raise OriginError("origin content changed during the download (length differs)")
    return 0

