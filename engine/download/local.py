"""The downloader's side of the piece store: open or create, commit, finish.

Every call that hashes, writes or syncs (a FileSink's buffers, commit_piece,
finish, a whole-file digest) runs on the downloader's single "disk" thread,
never on the event loop. One thread, not several: TaskFile mutates its meta
on each commit and is not thread-safe, and the order of the jobs on that
thread is what makes streamed verification correct (engine.download.sinks).
sha256 and pwrite release the GIL, so the loop keeps moving bytes meanwhile.
"""

from __future__ import annotations

import logging
import mmap
import os

from engine.download.sinks import WRITE_CHUNK, FileSink
from engine.errors import IntegrityError, StoreError, TaskNotFound, from_oserror
from engine.fileops import file_digest
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import Digest, TaskId

log = logging.getLogger(__name__)


def open_complete(store: PieceStore, task_id: TaskId) -> TaskFile | None:
    """The task if the store holds it complete, else None (a partial one is left alone)."""
    try:
        task = store.open(task_id)
    except TaskNotFound:
        return None
    except StoreError as exc:
        log.warning("task %s in the store is unusable: %s", task_id, exc)
        return None
    if task.complete:
        return task
    task.close()
    return None


def open_or_create(store: PieceStore, task_id: TaskId, url: str, layout: PieceLayout,
                   output_copy: bool = True, **meta_fields) -> TaskFile:
    """The task with this layout, reusing verified pieces of a partial one.

    Creating is the disk-space precheck (NotEnoughSpace) and preallocates.
    A stored task with another layout (the file changed) is replaced.
    """
    for _ in range(3):
        try:
            task = store.open(task_id)
        except TaskNotFound:
            pass
        except StoreError as exc:
            log.warning("replacing unusable task %s: %s", task_id, exc)
            store.remove(task_id)
        else:
            if task.layout == layout and _digests_cover_bitmap(task):
                return task
            task.close()
            log.info("task %s changed layout or lost its digests; starting over", task_id)
            store.remove(task_id)
        try:
            return store.create(TaskMeta.new(task_id, url, layout, **meta_fields), output_copy)
        except StoreError:
            if not os.path.exists(store.task_path(task_id)):
                raise
            # Another process created it between our open and create: open theirs.
    raise StoreError(f"task {task_id} keeps changing under us")


def _digests_cover_bitmap(task: TaskFile) -> bool:
    """Every piece the bitmap claims has its digest in the meta (a partial task
    whose writer died before saving them cannot be finished: start over)."""
    digests = task.meta.piece_digests
    return task.complete or all(digests[i] is not None for i in task.bitmap.indices())


def commit(task: TaskFile, index: int, sha256: str) -> bool:
    """Verify and publish piece ``index``, then drop its pages from our RSS.

    Runs on the disk thread. Raises IntegrityError when the bytes are wrong.
    """
    try:
        return task.commit_piece(index, sha256)
    finally:
        task.release(index)


def verify_streamed(task: TaskFile, index: int, sha256: str, sink: FileSink,
                    actual: str | None) -> bool:
    """Publish piece ``index`` if the bytes ``sink`` wrote hash to ``sha256``.

    ``actual`` is the sink's digest once every buffer was hashed (None: the
    sink's write jobs hashed them, so its digest is final here). Runs on the
    disk thread, queued behind the sink's writes (engine.download.sinks):
    they are all done, and the digest covers exactly the bytes in the file,
    so nothing is read back. Raises IntegrityError on a mismatch, the
    write's error (StoreError, NotEnoughSpace) if one failed.
    """
    if sink.error is not None:
        raise from_oserror(sink.error, "writing a piece") from sink.error
    if actual is None:
        actual = sink.sha256()
    if actual != sha256:
        raise IntegrityError(f"piece {index} of {task.task_id} does not match its sha256")
    published = task.publish_piece(index, sha256)
    sink.exported(index)
    return published


def install(task: TaskFile, index: int, data: mmap.mmap, sha256: str) -> bool:
    """Write piece ``index`` from ``data`` (bytes already verified against
    ``sha256``, engine.download.piece.race) and publish it. Runs on the disk
    thread, after every write of an earlier attempt at the piece."""
    r = task.layout.range(index)
    try:
        with memoryview(data)[:r.length] as view:
            at = 0
            while at < r.length:
                with view[at:at + WRITE_CHUNK] as chunk:
                    at += os.pwrite(task.fd, chunk, r.start + at)
    except OSError as exc:
        raise from_oserror(exc, "writing a piece") from exc
    return task.publish_piece(index, sha256)


def finish_verified(task: TaskFile, expected: Digest | None, trusted: dict[str, str],
                    cdn_sha256: str | None = None, durable: bool = True) -> None:
    """Mark ``task`` complete after checking the user's expected digest.

    ``trusted`` maps algorithm to digests we computed over exactly these
    bytes (the origin stream); ``cdn_sha256`` is the CDN's whole-file sha256,
    which every verified piece stands for. An expected digest not in
    ``trusted`` is checked by reading the file again. Raises IntegrityError
    on a mismatch (the caller removes the task). Runs on the disk thread.
    ``durable`` as for ``TaskFile.finish``.
    """
    digests = dict(trusted)
    if expected is not None:
        if expected.algorithm not in digests:
            digests[expected.algorithm] = file_digest(task.fd, task.meta.length,
                                                      expected.algorithm)
        if digests[expected.algorithm] != expected.hex:
            raise IntegrityError(f"{expected.algorithm} of the downloaded file is "
                                 f"{digests[expected.algorithm]}, expected {expected.hex}")
    sha256 = digests.get("sha256")
    if sha256 is not None and cdn_sha256 is not None and sha256 != cdn_sha256:
        raise IntegrityError(f"sha256 of the downloaded file is {sha256}, "
                             f"the supernode says {cdn_sha256}")
    sha256 = sha256 or cdn_sha256
    task.finish(sha256, rehash=sha256 is None, durable=durable)
