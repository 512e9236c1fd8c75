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
waited on); the only wait for the disk is that one fdatasync at the end.

Reopening after a restart (``PieceStore.scan``): a complete task whose meta,
bitmap and data size agree is served again. A partial task is kept only if
each piece its bitmap claims still matches its digest (a crash can lose page
cache that the bitmap had already published); anything torn or inconsistent
is removed, never served. Paths come only from task ids, never from requests.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import shutil

import native
from engine.bitmap import PieceBitmap
from engine.diskspace import DiskBudget, Reservation
from engine.errors import BadInput, IntegrityError, StoreError, TaskNotFound, from_oserror
from engine.fileops import copy_file, file_digest, temp_path
from engine.meta import TaskMeta, write_atomically
from engine.types import TaskId

log = logging.getLogger(__name__)
# os.link errors after which a copy still works: another filesystem, too many
# links, a filesystem without hard links, fs.protected_hardlinks.
_LINK_REFUSED = (errno.EXDEV, errno.EMLINK, errno.EPERM, errno.EOPNOTSUPP, errno.EACCES)


class TaskFile:
    """One task's data, bitmap and meta, open in this process."""

    def __init__(self, path: str, meta: TaskMeta, fd: int, bitmap: PieceBitmap,
                 journal: int) -> None:
        self.path, self.meta, self.fd, self.bitmap = path, meta, fd, bitmap
        self._journal = journal
        self.layout = meta.layout
        self._mm = (mmap.mmap(fd, meta.length, mmap.MAP_SHARED,
                              mmap.PROT_READ | mmap.PROT_WRITE) if meta.length else None)
        self.reservation: Reservation | None = None
        self._direct: int | None = None

    @property
    def direct_fd(self) -> int:
        """The data file opened again with O_DIRECT, for aligned writes that
        should not pass through the page cache (engine.download.sinks); -1
        where the filesystem refuses it. Opened on first use."""
        if self._direct is None:
            try:
                self._direct = os.open(os.path.join(self.path, "data"),
                                       os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
            except OSError:
                self._direct = -1
        return self._direct

    @property
    def task_id(self) -> TaskId:
        return self.meta.task_id

    @property
    def complete(self) -> bool:
        return self.meta.state == "complete"

    def view(self, index: int) -> memoryview:
        """A writable view of piece ``index`` inside the mmapped data file."""
        r = self.layout.range(index)
        return memoryview(self._mm)[r.start:r.end]

    def has(self, index: int) -> bool:
        return 0 <= index < self.layout.count and self.bitmap.has(index)

    def write_piece(self, index: int, data: bytes | memoryview) -> None:
        """Copy ``data`` into piece ``index`` (the CDN path; peers receive in place)."""
        r = self.layout.range(index)
        if len(data) != r.length:
            raise BadInput(f"piece {index} is {r.length} bytes, got {len(data)}")
        with self.view(index) as target:
            target[:] = data

    def commit_piece(self, index: int, sha256: str) -> bool:
        """Verify piece ``index`` against ``sha256`` and publish it.

        Returns True if this call published it. Raises IntegrityError (and
        publishes nothing) when the bytes do not match.
        """
        with self.view(index) as piece:
            actual = hashlib.sha256(piece).hexdigest()
        if actual != sha256:
            raise IntegrityError(f"piece {index} of {self.task_id} does not match its sha256")
        return self.publish_piece(index, sha256)

    def publish_piece(self, index: int, sha256: str) -> bool:
        """Publish piece ``index`` whose bytes the caller has just hashed to ``sha256``.

        Only for a caller that computed the digest over exactly the bytes it
        put in the file (the CDN cutting pieces from this mapping; a
        downloader hashing its buffers on their way in, engine.download.
        local): everyone else uses commit_piece, which reads the piece back.
        """
        r = self.layout.range(index)
        native.sync_file_range(self.fd, r.start, r.length)
        try:
            os.pwrite(self._journal, bytes.fromhex(sha256), index * 32)
        except OSError as exc:
            raise from_oserror(exc, f"journaling the digest of piece {index}") from exc
        if self.meta.piece_digests[index] != sha256:
            self.meta = self.meta.with_digest(index, sha256)
        return self.bitmap.set(index)

    def release(self, index: int) -> None:
        """Unmap piece ``index``'s pages from this process (MADV_DONTNEED).

        The bytes stay in the page cache and on their way to disk (a shared
        file mapping hands its dirty bits to the page cache when unmapped);
        only this process's page tables let go, so a downloader's RSS stays
        flat however large the file. The next access faults the pages back in.
        """
        if self._mm is None:
            return
        r = self.layout.range(index)
        self._mm.madvise(mmap.MADV_DONTNEED, r.start, r.length)

    def save_meta(self) -> None:
        write_atomically(os.path.join(self.path, "meta"), self.meta.to_bytes())

    def finish(self, sha256: str | None = None, digests: list[str] | None = None,
               rehash: bool = True) -> None:
        """Mark the task complete once every piece is in.

        ``digests`` fills in piece digests this process did not verify itself
        (pieces another worker wrote). ``sha256`` is the expected whole-file
        digest. With ``rehash`` the file is read once more and checked against
        it; without, every piece having matched its digest stands for the
        file, and ``sha256`` (which must then be given) is trusted as the
        digest the CDN computed over the same bytes.
        """
        if not self.bitmap.complete():
            raise StoreError(f"task {self.task_id} is missing pieces")
        for i, d in enumerate(digests or ()):
            if self.meta.piece_digests[i] is None:
                self.meta = self.meta.with_digest(i, d)
        if rehash:
            actual = file_digest(self.fd, self.meta.length)
            if sha256 is not None and actual != sha256:
                raise IntegrityError(f"task {self.task_id} sha256 mismatch")
        elif sha256 is None:
            raise BadInput("finish without rehash needs the file sha256")
        else:
            actual = sha256
        try:
            os.fdatasync(self.fd)
            mtime = os.fstat(self.fd).st_mtime_ns
        except OSError as exc:
            raise from_oserror(exc, "syncing task data") from exc
        self.meta = self.meta.completed(actual, mtime)
        self.save_meta()

    def export(self, output: str, link: bool = False, copy_if_refused: bool = False) -> None:
        """Produce the finished file at ``output`` atomically.

        In-kernel copy (reflink when the filesystem can, else copy_file_range)
        by default; a hard link when ``link`` (the output is then the cache's
        own inode: see ``changed_since_complete`` for what an edit in place
        does). With ``copy_if_refused`` a link the filesystem refuses (another
        filesystem, a link-count limit, protected_hardlinks) becomes a copy
        instead of an error. The bytes appear under a temporary name in the
        same directory and are renamed into place, so a reader never sees a
        partial file at ``output``.
        """
        if not self.complete:
            raise StoreError(f"task {self.task_id} is not complete")
        output = os.path.abspath(output)
        tmp = temp_path(output)
        try:
            if os.path.isdir(output):
                raise BadInput(f"output {output} is a directory")
            _remove_quietly(tmp)
            if link and not self._link(tmp, copy_if_refused):
                link = False
            if not link:
                copy_file(self.fd, tmp, self.meta.length)
            os.replace(tmp, output)
        except OSError as exc:
            _remove_quietly(tmp)
            raise from_oserror(exc, f"writing {output}") from exc
        except BaseException:
            _remove_quietly(tmp)
            raise

    def _link(self, tmp: str, copy_if_refused: bool) -> bool:
        """Hard-link the data file at ``tmp``; False if refused and a copy may do."""
        try:
            os.link(os.path.join(self.path, "data"), tmp)
        except OSError as exc:
            if copy_if_refused and exc.errno in _LINK_REFUSED:
                return False
            raise
        return True

    def changed_since_complete(self) -> bool:
        """True when the data file was written after ``finish`` recorded it.

        A hard-linked output (``export(link=True)``, dfget's default on the
        cache's filesystem) is the cache's inode: editing it in place edits
        the cache. Any write moves the file's mtime, which ``finish`` keeps in
        the meta; such a task must not be exported or served again. Metas from
        before the field existed (None) are taken as unchanged. The blind spot:
        on kernels without fine-grained timestamps (before 6.13), a write
        within the same clock tick (a few ms) as ``finish`` leaves the mtime
        as it was; an edit made by hand comes far later.
        """
        recorded = self.meta.data_mtime_ns
        return (self.complete and recorded is not None
                and os.fstat(self.fd).st_mtime_ns != recorded)

    def close(self) -> None:
        if self.fd >= 0:
            if self._mm is not None:
                self._mm.close()
            self.bitmap.close()
            os.close(self._journal)
            os.close(self.fd)
            self.fd = -1
            if self._direct is not None and self._direct >= 0:
                os.close(self._direct)
            self._direct = None
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None


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
                write_atomically(os.path.join(tmp, "meta"), meta.to_bytes())
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
                    if not task.complete:
                        _check_partial(task)
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


def _check_partial(task: TaskFile) -> None:
    for index in task.bitmap.indices():
        digest = task.meta.piece_digests[index]
        with task.view(index) as piece:
            if digest is None or hashlib.sha256(piece).hexdigest() != digest:
                raise StoreError(f"piece {index} lost or unverifiable after restart")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
