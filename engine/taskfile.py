"""One task's files, open in this process: its pieces, its completion, its export.

The layout of a task directory and the life of a task (partial, then
complete) are in engine.store, which creates and opens these.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
from dataclasses import replace

import native
from engine.bitmap import PieceBitmap
from engine.diskspace import Reservation
from engine.errors import BadInput, IntegrityError, StoreError, from_oserror
from engine.fileops import copy_file, file_digest, remove_quietly, temp_path
from engine.meta import TaskMeta, write_atomically
from engine.types import TaskId

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

    def save_meta(self, durable: bool = True) -> None:
        write_atomically(os.path.join(self.path, "meta"), self.meta.to_bytes(), durable)

    def finish(self, sha256: str | None = None, digests: list[str] | None = None,
               rehash: bool = True, durable: bool = True) -> None:
        """Mark the task complete once every piece is in.

        ``digests`` fills in piece digests this process did not verify itself
        (pieces another worker wrote). ``sha256`` is the expected whole-file
        digest. With ``rehash`` the file is read once more and checked against
        it; without, every piece having matched its digest stands for the
        file, and ``sha256`` (which must then be given) is trusted as the
        digest the CDN computed over the same bytes.

        ``durable``: the data is synced before the meta says complete. Without,
        nothing waits for the disk: the meta says complete but not synced
        (every process may serve and export the task at once, and a restart
        checks its pieces as it checks a partial task's), until ``sync``.
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
            if durable:
                os.fdatasync(self.fd)
            mtime = os.fstat(self.fd).st_mtime_ns
        except OSError as exc:
            raise from_oserror(exc, "syncing task data") from exc
        self.meta = self.meta.completed(actual, mtime, synced=durable)
        self.save_meta(durable)

    def sync(self) -> None:
        """Make a completion that ``finish(durable=False)`` recorded durable:
        the data to the disk, then the meta that says so."""
        if not self.complete or self.meta.synced:
            return
        try:
            os.fdatasync(self.fd)
        except OSError as exc:
            raise from_oserror(exc, "syncing task data") from exc
        self.meta = replace(self.meta, synced=True)
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
            remove_quietly(tmp)
            if link and not self._link(tmp, copy_if_refused):
                link = False
            if not link:
                copy_file(self.fd, tmp, self.meta.length)
            os.replace(tmp, output)
        except OSError as exc:
            remove_quietly(tmp)
            raise from_oserror(exc, f"writing {output}") from exc
        except BaseException:
            remove_quietly(tmp)
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
