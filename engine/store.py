"""The piece store: one directory per task, shared by every process of a host.

Theory of operation. ``<root>/tasks/<task id>/`` holds four files:

- ``data``: the file's bytes, preallocated to the full length before the
  first piece arrives, and mmapped MAP_SHARED by every process that touches
  the task. Pieces land at their own offsets in any order.
- ``bitmap``: which pieces are verified (see engine.bitmap).
- ``digests``: 32 raw sha256 bytes per piece, written at the piece's slot
  before its bit is set. Any process may publish a piece, and only one
  writes the meta; this journal is how a reopened partial task knows the
  digest of every piece its bitmap claims, even after a worker was killed.
- ``meta``: length, piece size, digests, origin validators, state (see
  engine.meta); rewritten atomically.

A task is *partial* until every bit is set and the whole-file sha256 is
known; ``TaskFile.finish`` then syncs the data and flips the meta to
*complete*. Writeback is started lazily per piece (sync_file_range, never
waited on); the only wait for the disk is that one fdatasync at the end,
and a downloader does not wait for that either: it finishes with
``durable=False`` (the meta says complete, not synced) and syncs the task a
few seconds later (engine.lazysync), so that a client's download ends
when its last piece is verified.

Reopening after a restart (``PieceStore.scan``): a complete task whose meta,
bitmap and data size agree is served again. A partial task is kept only if
each piece its bitmap claims still matches its digest (a crash can lose page
cache that the bitmap had already published), and so is a complete task
whose completion was never synced (checked, then synced); anything torn or
inconsistent is removed, never served. Paths come only from task ids, never from requests.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil

import native
from engine.bitmap import PieceBitmap
from engine.diskspace import DiskBudget
from engine.errors import BadInput, IntegrityError, StoreError, TaskNotFound, from_oserror
from engine.meta import TaskMeta, write_atomically
from engine.taskfile import TaskFile
from engine.types import TaskId

log = logging.getLogger(__name__)


class PieceStore:
    """The tasks under ``root``; one instance per process.

    Creating tasks is the job of one owner per host (the coordinator, or the
    supernode process), which also owns the DiskBudget; any process may open
    existing tasks and read or fill them.
    """

    def __init__(self, root: str, budget: DiskBudget | None = None) -> None:
        self.root = os.path.abspath(root)
        self.tasks_dir = os.path.join(self.root, "tasks")
        os.makedirs(self.tasks_dir, exist_ok=True)
        self.budget = budget or DiskBudget()

    def task_path(self, task_id: TaskId) -> str:
        return os.path.join(self.tasks_dir, task_id.hex)

    def create(self, meta: TaskMeta, output_copy: bool = True) -> TaskFile:
        """Precheck space, preallocate and open a new partial task."""
        path = self.task_path(meta.task_id)
        if os.path.exists(path):
            raise StoreError(f"task {meta.task_id} already exists")
        reservation = self.budget.reserve(self.root, meta.task_id.hex, now=meta.length,
                                          later=meta.length if output_copy else 0)
        tmp = f"{path}.creating.{os.getpid()}"
        try:
            os.makedirs(tmp)
            fd = os.open(os.path.join(tmp, "data"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if meta.length:
                    native.fallocate(fd, 0, meta.length)
                    native.fadvise(fd, 0, meta.length, native.Advice.SEQUENTIAL)
                PieceBitmap.create(os.path.join(tmp, "bitmap"), meta.layout.count).close()
                with open(os.path.join(tmp, "digests"), "wb") as journal:
                    journal.truncate(32 * meta.layout.count)
                # Not synced: a new task's meta lost in a crash makes it torn,
                # and the scan removes it (a sync here stalled every other
                # writer of the disk as the downloads started).
                write_atomically(os.path.join(tmp, "meta"), meta.to_bytes(), durable=False)
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException as exc:
            reservation.release()
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise from_oserror(exc, f"creating task {meta.task_id}") from exc
            raise
        task = self.open(meta.task_id)
        task.reservation = reservation
        return task

    def open(self, task_id: TaskId) -> TaskFile:
        """Open an existing task, checking that its files agree."""
        path = self.task_path(task_id)
        try:
            with open(os.path.join(path, "meta"), "rb") as f:
                meta = TaskMeta.from_bytes(f.read())
        except FileNotFoundError as exc:
            raise TaskNotFound(f"task {task_id} is not in the store") from exc
        except OSError as exc:
            raise from_oserror(exc, f"reading meta of {task_id}") from exc
        if meta.task_id != task_id:
            raise StoreError(f"meta in {path} belongs to another task")
        try:
            fd = os.open(os.path.join(path, "data"), os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise StoreError(f"task {task_id} has no readable data file") from exc
        journal = -1
        try:
            if os.fstat(fd).st_size != meta.length:
                raise StoreError(f"task {task_id} data size disagrees with its meta")
            try:
                journal = os.open(os.path.join(path, "digests"), os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise StoreError(f"task {task_id} has no digest journal") from exc
            bitmap = PieceBitmap.open(os.path.join(path, "bitmap"), meta.layout.count)
            if meta.state != "complete":
                meta = _with_journaled_digests(meta, bitmap, journal)
        except BaseException:
            os.close(fd)
            if journal >= 0:
                os.close(journal)
            raise
        task = TaskFile(path, meta, fd, bitmap, journal)
        if task.complete and not bitmap.complete():
            task.close()
            raise StoreError(f"task {task_id} is marked complete but misses pieces")
        if task.changed_since_complete():
            task.close()
            raise StoreError(f"task {task_id} data was written after it was complete "
                             f"(a hard-linked output edited in place?)")
        return task

    def remove(self, task_id: TaskId) -> None:
        path = self.task_path(task_id)
        doomed = f"{path}.removing.{os.getpid()}"
        try:
            os.rename(path, doomed)  # atomic: nobody opens a half-deleted task
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def complete_tasks(self) -> list[TaskMeta]:
        """The metadata of every complete task, in name order; unreadable ones skipped."""
        out = []
        for name in sorted(os.listdir(self.tasks_dir)):
            try:
                task = self.open(TaskId(name))
            except (BadInput, StoreError, IntegrityError):
                continue
            try:
                if task.complete:
                    out.append(task.meta)
            finally:
                task.close()
        return out

    def scan(self) -> list[TaskMeta]:
        """Check every task after a restart; drop the torn ones. Returns the kept."""
        kept = []
        for name in sorted(os.listdir(self.tasks_dir)):
            full = os.path.join(self.tasks_dir, name)
            try:
                task_id = TaskId(name)
            except BadInput:
                log.warning("removing leftover %s from the store", name)
                shutil.rmtree(full, ignore_errors=True)
                continue
            try:
                task = self.open(task_id)
                try:
                    if not task.complete or not task.meta.synced:
                        _check_pieces(task)
                        task.sync()         # a complete one: what was read is on disk
                    kept.append(task.meta)
                finally:
                    task.close()
            except (StoreError, IntegrityError) as exc:
                log.warning("discarding task %s: %s", name, exc)
                self.remove(task_id)
        return kept


def _with_journaled_digests(meta: TaskMeta, bitmap: PieceBitmap, journal: int) -> TaskMeta:
    """Fill in the digests of published pieces that this meta does not know."""
    missing = [i for i in bitmap.indices() if meta.piece_digests[i] is None]
    if not missing:
        return meta
    raw = os.pread(journal, 32 * meta.layout.count, 0)
    for i in missing:
        entry = raw[32 * i:32 * i + 32]
        if len(entry) == 32 and any(entry):
            meta = meta.with_digest(i, entry.hex())
    return meta


def _check_pieces(task: TaskFile) -> None:
    """Every piece the bitmap claims still matches its digest (after a restart:
    a partial task, or a completion that was never synced)."""
    for index in task.bitmap.indices():
        digest = task.meta.piece_digests[index]
        with task.view(index) as piece:
            if digest is None or hashlib.sha256(piece).hexdigest() != digest:
                raise StoreError(f"piece {index} lost or unverifiable after restart")
