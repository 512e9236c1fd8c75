"""Back-to-source: stream the file from the origin into the store ourselves.

Used when no supernode answers or the supernode says ``back_to_source``.
The response body is cut into pieces of the task's layout as it arrives:
each piece is written at its offset with pwrite (straight into the page
cache, nothing mapped into this process), hashed on the way, then committed
on the disk thread (verify + publish, so it is servable at once) and its
pages released. The whole-file sha256, and the user's md5 if asked for,
are computed over the same stream, so finishing needs no second read.

A body without a length (chunked) is spooled to a file next to the store,
then cut into pieces once the length, and therefore the piece size, is
known: the same piece size every other peer and the CDN would choose.

The request's headers go to the origin (redirects followed; aiohttp drops
Authorization when a redirect changes host) and nowhere else. The body is
stored as sent (``Accept-Encoding: identity`` unless the caller chose one,
no transparent decompression): the bytes are the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile

import aiohttp

from engine.download.context import Context, Job
from engine.download.local import commit, open_or_create
from engine.errors import OriginError, StoreError, from_oserror
from engine.messages import TaskView
from engine.meta import redact_url
from engine.pieces import PieceLayout
from engine.taskfile import TaskFile

MAX_PENDING_COMMITS = 4
SPOOL_CHUNK = 1 << 20


class PieceWriter:
    """Cuts a byte stream into the pieces of ``task``; skips pieces it already has."""

    def __init__(self, ctx: Context, job: Job, task: TaskFile, algorithms: set[str]) -> None:
        self.ctx, self.job, self.task = ctx, job, task
        self.layout = task.layout
        self.hashes = {alg: hashlib.new(alg) for alg in algorithms | {"sha256"}}
        self._index = 0
        self._filled = 0
        self._piece_hash = hashlib.sha256()
        self._pending: list[asyncio.Future] = []

    async def write(self, data: bytes | memoryview) -> None:
        for h in self.hashes.values():
            h.update(data)
        view = memoryview(data)
        while view:
            if self._index >= self.layout.count:
                raise OriginError("the origin sent more bytes than it announced")
            piece = self.layout.range(self._index)
            part = view[:piece.length - self._filled]
            if not self.task.has(self._index):
                _pwrite_all(self.task.fd, part, piece.start + self._filled)
            self._piece_hash.update(part)
            self._filled += len(part)
            view = view[len(part):]
            if self._filled == piece.length:
                await self._piece_complete()

    async def _piece_complete(self) -> None:
        index, digest = self._index, self._piece_hash.hexdigest()
        nbytes = self.layout.size_of(index)
        self._index, self._filled, self._piece_hash = index + 1, 0, hashlib.sha256()
        if self.task.has(index):
            return
        self._pending.append(asyncio.ensure_future(self.ctx.on_disk(commit, self.task, index,
                                                                    digest)))
        self.ctx.stats.bytes_from_origin += nbytes
        self.job.piece_done(nbytes, "origin")
        if len(self._pending) >= MAX_PENDING_COMMITS:
            await self._pending.pop(0)

    async def close(self) -> dict[str, str]:
        """Wait for the commits; the stream's digests by algorithm."""
        try:
            if self._index != self.layout.count:
                raise OriginError(f"the origin sent {self.layout.range(self._index).start + self._filled}"
                                  f" of {self.layout.length} bytes")
        finally:
            pending, self._pending = self._pending, []
            results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                # Our own pwrite did not read back: the disk or page cache is lying.
                raise StoreError(f"a piece written from the origin failed to verify: {result}")
        return {alg: h.hexdigest() for alg, h in self.hashes.items()}

    async def abort(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending, return_exceptions=True)


async def download_from_origin(ctx: Context, job: Job, view: TaskView | None) -> dict[str, str]:
    """Fetch ``job``'s file from the origin into ``job.task``; the stream's digests."""
    request = job.request
    url = request.url
    # Our own request reads the whole file: a caller's Range would cut it short.
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("range", "if-range")}
    if not any(name.lower() == "accept-encoding" for name in headers):
        headers["Accept-Encoding"] = "identity"
    algorithms = {request.digest.algorithm} if request.digest else set()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=ctx.origin_connect_timeout,
                                    sock_read=ctx.origin_read_timeout)
    job.set_state("back_to_source")
    ctx.stats.back_to_source += 1
    await ctx.quiesce()  # commits of the P2P path are over before a task may be closed
    try:
        async with ctx.session.get(url, headers=headers, allow_redirects=True,
                                   auto_decompress=False, timeout=timeout) as resp:
            if resp.status != 200:
                raise OriginError(f"the origin answered {resp.status} {resp.reason or ''} for "
                                  f"{redact_url(url)}".replace("  ", " "), resp.status)
            validators = {"etag": resp.headers.get("ETag"),
                          "last_modified": resp.headers.get("Last-Modified")}
            if resp.content_length is None:
                return await _spooled(ctx, job, resp, view, algorithms, validators)
            task = _task_for(ctx, job, resp.content_length, view, validators)
            writer = PieceWriter(ctx, job, task, algorithms)
            try:
                async for chunk in resp.content.iter_any():
                    await _pace(ctx, len(chunk))
                    await writer.write(chunk)
            except BaseException:
                await writer.abort()
                raise
            return await writer.close()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise OriginError(f"fetching {redact_url(url)} from the origin failed: "
                          f"{_describe(exc)}") from exc


def _task_for(ctx: Context, job: Job, length: int, view: TaskView | None,
              validators: dict) -> TaskFile:
    if view is not None and view.length == length and view.piece_size:
        layout = PieceLayout(length, view.piece_size)
    else:
        layout = PieceLayout.for_length(length)
    if job.task is not None and job.task.layout == layout and not job.task.complete:
        return job.task
    if job.task is not None:
        job.task.close()
        job.task = None
    # Under the supernode's name for the file if it gave one, else the identity.
    task_id = view.task_id if view is not None else job.request.task_id
    job.set_task(open_or_create(ctx.store, task_id, job.request.url, layout, job.output_copy,
                                **validators))
    return job.task


async def _spooled(ctx: Context, job: Job, resp: aiohttp.ClientResponse, view: TaskView | None,
                   algorithms: set[str], validators: dict) -> dict[str, str]:
    """A body of unknown length: spool it, then cut it into pieces."""
    try:
        fd, path = tempfile.mkstemp(prefix=".spool-", dir=ctx.store.root)
    except OSError as exc:
        raise from_oserror(exc, "creating a spool file") from exc
    try:
        total = 0
        async for chunk in resp.content.iter_any():
            await _pace(ctx, len(chunk))
            _pwrite_all(fd, memoryview(chunk), total)
            total += len(chunk)
        writer = PieceWriter(ctx, job, _task_for(ctx, job, total, view, validators), algorithms)
        try:
            offset = 0
            while offset < total:
                data = _pread(fd, min(SPOOL_CHUNK, total - offset), offset)
                if not data:
                    raise StoreError("the spool file ended early")
                await writer.write(data)
                offset += len(data)
        except BaseException:
            await writer.abort()
            raise
        return await writer.close()
    finally:
        os.close(fd)
        os.unlink(path)


def _describe(exc: BaseException) -> str:
    """The error without the URL: aiohttp puts the full URL, signed query
    included, into some messages, and a signature must not reach a log."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{type(exc).__name__} {exc.status} {exc.message}"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid URL"
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ClientOSError)):
        return f"{type(exc).__name__}: {exc.strerror or exc.errno or ''}"
    return type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__


async def _pace(ctx: Context, nbytes: int) -> None:
    if ctx.pacer is not None and nbytes:
        await ctx.pacer.acquire(nbytes)


def _pread(fd: int, n: int, offset: int) -> bytes:
    try:
        return os.pread(fd, n, offset)
    except OSError as exc:
        raise from_oserror(exc, "reading the spool file") from exc


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    try:
        while data:
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    except OSError as exc:
        raise from_oserror(exc, "writing task data") from exc
