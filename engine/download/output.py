"""The user's output file, written while the task downloads.

Why. The finished file must appear at its path atomically, whole or not at
all, next to the task in the piece store (which other peers are served
from). Copying it out of the store after the download is a second pass
over the whole file: on ext4 (no reflink) copy_file_range of 2 GiB plus its
fsync took 1.5-6 s on the 2-core VM, as long as the download itself. So an
``OutputFile`` is attached to the download instead, and every bounce buffer
a FileSink writes into the task file is also written into the output's
temporary file, on the export thread (engine.download.sinks). When a piece
is verified its range is marked as exported. ``finish`` then copies in the
kernel only the pieces that did not arrive that way (held before, fetched
by another path, an endgame race's winner, or fetched while the output
failed), syncs the file and renames it into place.

How. Aligned writes (every buffer but a file's last) go out with O_DIRECT
straight from the page-aligned bounce buffer: no second copy of the file in
the page cache, no CPU spent copying, and the final fsync finds nothing to
write back. The cost: a reader of the output right afterwards reads it
from the disk rather than from memory. Where O_DIRECT is refused (tmpfs,
some FUSE) or the device wants another alignment, writes are buffered, 64
KiB at a time (engine.download.sinks.WRITE_CHUNK says why). Where the
filesystem shares blocks (reflink: btrfs, XFS), writing twice would only
cost: the first write probes FICLONE, and if the filesystem can, streaming
stops and ``finish`` clones the whole file.

Threads. ``write``, ``mark`` and ``abort`` run on the downloader's export
thread only, so they happen in job order: nothing is written after an
abort, and a piece is marked only after every one of its bytes was
written. ``finish`` runs once the download is over (no job can touch this
output any more), on any thread.
"""

from __future__ import annotations

import errno
import os

import native
from engine.errors import BadInput, DamselflyError, StoreError, from_oserror
from engine.fileops import copy_range, reflink, remove_quietly, temp_path
from engine.taskfile import TaskFile

WRITE_CHUNK = 64 << 10
DIRECT_ALIGN = 4096


class OutputFile:
    """``path`` produced from one task: streamed into while it downloads, finished after."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if os.path.isdir(self.path):
            raise BadInput(f"output {self.path} is a directory")
        self.tmp = temp_path(self.path)
        self.error: OSError | None = None
        self.streamed = 0                # bytes written while downloading
        self._fd = self._direct = -1
        self._state = "new"              # new -> streaming | cloning | failed | closed
        self._exported: set[int] = set()

    # -- on the export thread, while the task downloads

    def write(self, task_fd: int, data: memoryview, position: int) -> None:
        """Copy bytes that were just written at ``position`` of the task file."""
        if self._state == "new":
            self._open(task_fd)
        if self._state != "streaming":
            return
        try:
            if self._direct >= 0 and not (position | len(data)) % DIRECT_ALIGN:
                try:
                    n = os.pwrite(self._direct, data, position)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    # Not aligned for this device after all: buffered from now on.
                    os.close(self._direct)
                    self._direct = -1
                else:
                    data, position = data[n:], position + n
                    self.streamed += n
            while data:
                n = os.pwrite(self._fd, data[:WRITE_CHUNK], position)
                data, position = data[n:], position + n
                self.streamed += n
        except OSError as exc:
            self._fail(exc)

    def mark(self, index: int, start: int, length: int) -> None:
        """Piece ``index`` (at ``start``) was verified and every byte of it written here."""
        if self._state == "streaming":
            self._exported.add(index)
            native.sync_file_range(self._fd, start, length)

    def abort(self) -> None:
        """Give up: nothing appears at the path."""
        self._close()
        self._state = "closed"
        remove_quietly(self.tmp)

    # -- after the download

    def finish(self, task: TaskFile) -> None:
        """Complete the file from ``task`` (complete in the store) and rename it
        into place. Raises StoreError, DiskFull, IOFailure; the path is untouched then."""
        try:
            if self._state == "new":
                self._open(task.fd)
            if self._state == "failed":
                raise from_oserror(self.error, f"writing {self.path}") from self.error
            if self._state == "closed":
                raise StoreError(f"output {self.path} was abandoned")
            if self._state == "cloning":
                os.ftruncate(self._fd, 0)
                if not reflink(task.fd, self._fd):
                    copy_range(task.fd, self._fd, 0, task.meta.length)
            else:
                layout = task.layout
                for index in range(layout.count):
                    if index not in self._exported:
                        r = layout.range(index)
                        copy_range(task.fd, self._fd, r.start, r.length)
            os.fsync(self._fd)
            self._close()
            os.replace(self.tmp, self.path)
            self._state = "closed"
        except DamselflyError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise from_oserror(exc, f"writing {self.path}") from exc
        except BaseException:
            self.abort()
            raise

    # -- internals

    def _open(self, task_fd: int) -> None:
        try:
            remove_quietly(self.tmp)
            self._fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                               0o644)
            # Probe with the (partial) task file: a filesystem that clones is
            # better served by one clone at the end than by writing twice.
            self._state = "cloning" if reflink(task_fd, self._fd) else "streaming"
            if self._state == "streaming":
                os.ftruncate(self._fd, os.fstat(task_fd).st_size)
                try:
                    self._direct = os.open(self.tmp, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
                except OSError:
                    self._direct = -1  # tmpfs, some FUSE: buffered writes only
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        self._state = "failed"
        self._close()

    def _close(self) -> None:
        for fd in (self._fd, self._direct):
            if fd >= 0:
                os.close(fd)
        self._fd = self._direct = -1
