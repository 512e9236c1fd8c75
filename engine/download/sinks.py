"""Where a piece's body goes as it arrives: two ways to land bytes in the task file.

A sink offers a buffer for the bytes at a body offset and is told how many
landed there; the receiver (engine.download.response) never knows which
kind it has.

- ``MemorySink``: the buffer *is* the piece's slice of the mmapped task
  file, so the kernel copies socket bytes straight into the page cache: one
  copy, but every first touch of a page is a page fault taken inside the
  socket receive (on ext4 a ``page_mkwrite`` per page of a fallocated file).
- ``FileSink``: the buffer is a small reused bytearray (cache-hot, no
  faults) and each full buffer is ``pwrite``-n at its offset: two copies,
  no faults, nothing mapped. This is the default. DESIGN.md asks for the
  one-copy receive into the mmap, but on the machines we have measured it
  loses: 512 MiB over a socketpair into a fallocated ext4 file took
  405-476 MB/s into the mapping, 455-588 MB/s with MADV_POPULATE_WRITE
  first, and 2,269-2,363 MB/s through a 1 MiB bounce buffer and pwrite.
  The fault per first-touched page costs far more than the extra memcpy.
  ``receive="mmap"`` keeps the other path for filesystems where it wins.

Both are written only by the event loop; ``close`` must be called once the
transport can no longer write into the buffer (an mmap slice must be
released before the mmap can be closed).
"""

from __future__ import annotations

import os

from engine.errors import from_oserror

BOUNCE = 1 << 20


class MemorySink:
    """Body bytes land in ``target`` (a writable buffer as long as the piece)."""

    def __init__(self, target: memoryview | bytearray) -> None:
        self._view = memoryview(target).cast("B") if len(target) else memoryview(bytearray())
        self.length = len(self._view)

    def buffer(self, offset: int) -> memoryview:
        return self._view[offset:]

    def landed(self, offset: int, n: int) -> None:
        pass

    def close(self) -> None:
        self._view.release()


class FileSink:
    """Body bytes go through a bounce buffer and are written to ``fd`` at ``start``."""

    def __init__(self, fd: int, start: int, length: int, bounce: int = BOUNCE) -> None:
        self.fd, self.start, self.length = fd, start, length
        self._buf = bytearray(max(1, min(bounce, length)))
        self._fill = 0      # bytes waiting in the bounce buffer
        self._flushed = 0   # body bytes already written to the file

    def buffer(self, offset: int) -> memoryview:
        room = min(len(self._buf) - self._fill, self.length - offset)
        return memoryview(self._buf)[self._fill:self._fill + room]

    def landed(self, offset: int, n: int) -> None:
        self._fill += n
        if self._fill == len(self._buf) or offset + n == self.length:
            self._flush()

    def _flush(self) -> None:
        view = memoryview(self._buf)[:self._fill]
        position = self.start + self._flushed
        try:
            while view:
                written = os.pwrite(self.fd, view, position)
                view, position = view[written:], position + written
        except OSError as exc:
            raise from_oserror(exc, "writing a piece") from exc
        finally:
            view.release()
        self._flushed += self._fill
        self._fill = 0

    def close(self) -> None:
        self._buf = bytearray(1)
