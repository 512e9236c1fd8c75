"""The per-task piece bitmap, in shared memory.

The bitmap is a small file mmapped MAP_SHARED by every process of the host,
so a bit set by one worker is visible to every other worker at once: that is
what makes a piece servable the moment it is verified. Bits are only ever
set, with an atomic fetch_or; a separate counter word (atomic fetch_add, done
only by the process whose fetch_or flipped the bit) says how many are set, so
"is the task complete" is one load, not a scan.

Layout, all little-endian uint64 words::

    word 0   MAGIC             identifies the file and its format
    word 1   piece count       must match the task metadata
    word 2   pieces set        maintained with fetch_add
    word 3.. bits              piece i is bit (i % 64) of word 3 + i // 64

What must stay true: a bit is set only after the piece's bytes are in the
data file and have matched their sha256.
"""

from __future__ import annotations

import mmap
import os

import native
from engine.errors import StoreError, from_oserror

MAGIC = int.from_bytes(b"DFBITMP1", "little")
HEADER_WORDS = 3


def _size_for(count: int) -> int:
    return 8 * (HEADER_WORDS + (count + 63) // 64)


class PieceBitmap:
    """A view of one task's bitmap file; cheap to open in every process."""

    def __init__(self, fd: int, mm: mmap.mmap, count: int) -> None:
        self._fd, self._mm, self.count = fd, mm, count
        self._words = native.SharedWords(mm, lock_fd=fd)

    @classmethod
    def create(cls, path: str, count: int) -> PieceBitmap:
        bitmap = cls._open(path, count, create=True)
        bitmap._words.store(1, count)
        bitmap._words.store(0, MAGIC)  # last: a torn create never looks valid
        return bitmap

    @classmethod
    def open(cls, path: str, count: int) -> PieceBitmap:
        """Open an existing bitmap and check it belongs to a ``count``-piece task."""
        bitmap = cls._open(path, count, create=False)
        words = bitmap._words
        if words.load(0) != MAGIC or words.load(1) != count:
            bitmap.close()
            raise StoreError(f"bitmap {path} does not match its task")
        if bitmap.set_count() != sum(bitmap.has(i) for i in range(count)):
            bitmap.close()
            raise StoreError(f"bitmap {path} counter disagrees with its bits")
        return bitmap

    @classmethod
    def _open(cls, path: str, count: int, create: bool) -> PieceBitmap:
        size = _size_for(count)
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise from_oserror(exc, f"opening bitmap {path}") from exc
        try:
            if create:
                os.ftruncate(fd, size)
            elif os.fstat(fd).st_size != size:
                raise StoreError(f"bitmap {path} has the wrong size")
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise from_oserror(exc, f"mapping bitmap {path}") from exc
        except StoreError:
            os.close(fd)
            raise
        return cls(fd, mm, count)

    def has(self, index: int) -> bool:
        return bool(self._words.load(HEADER_WORDS + index // 64) >> (index % 64) & 1)

    def set(self, index: int) -> bool:
        """Set piece ``index``; True if this call set it (it was not set before)."""
        if not 0 <= index < self.count:
            raise StoreError(f"piece {index} outside bitmap of {self.count}")
        bit = 1 << (index % 64)
        old = self._words.fetch_or(HEADER_WORDS + index // 64, bit)
        if old & bit:
            return False
        self._words.fetch_add(2, 1)
        return True

    def set_count(self) -> int:
        return self._words.load(2)

    def complete(self) -> bool:
        return self.set_count() == self.count

    def indices(self) -> list[int]:
        return [i for i in range(self.count) if self.has(i)]

    def close(self) -> None:
        if self._fd >= 0:
            self._words.close()
            self._mm.close()
            os.close(self._fd)
            self._fd = -1
