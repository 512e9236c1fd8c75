"""The portable implementation, used when the extension is missing or killed.

Same names, signatures and error classes as ``native.extension``; where the
standard library cannot do what the kernel call does, the difference is
documented on the function and in ``native/__init__.py``:

* ``fallocate(keep_size=True)`` reserves only the part of the range below
  the current end of file (``os.posix_fallocate`` would move the end of file);
* ``punch_hole`` raises ``IOFailure`` with ``errno.EOPNOTSUPP``, the same
  error a filesystem without hole punching gives the extension, so callers
  handle one case ("space cannot be given back early");
* ``sync_file_range`` does nothing: the kernel writes the pages back on its
  own schedule, which is all the hot path ever asked for;
* ``SharedWords`` serialises each operation with a process-wide
  ``threading.Lock`` plus an ``fcntl`` byte-range lock on the word in the
  backing file, so it needs that file's fd (``lock_fd``).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import stat
import struct
import threading
from collections.abc import Callable

from engine.errors import BadInput, IOFailure
from native._common import (
    Advice,
    SharedWordsBase,
    check_advice,
    check_fd,
    check_span,
    raise_errno,
    raise_oserror,
)

__all__ = [
    "Advice",
    "SharedWords",
    "fadvise",
    "fallocate",
    "punch_hole",
    "sendfile",
    "sync_file_range",
]

_MAX_CHUNK = 0x7FFFF000  # Linux moves at most this much per sendfile(2)
_WORD = struct.Struct("<Q")


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    out_fd = check_fd("out_fd", out_fd)
    in_fd = check_fd("in_fd", in_fd)
    offset, count = check_span(offset, count)
    total = 0
    while total < count:
        try:
            # os.sendfile retries EINTR itself after running signal handlers.
            n = os.sendfile(out_fd, in_fd, offset + total, min(count - total, _MAX_CHUNK))
        except BlockingIOError:
            break
        except OSError as exc:
            raise_oserror(exc, f"sendfile after {total} bytes")
        if n == 0:  # EOF of in_fd
            break
        total += n
    return total


def fallocate(fd: int, offset: int, length: int, keep_size: bool = False) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length, min_length=1)
    what = f"fallocate {length} bytes at {offset}"
    try:
        if keep_size:
            # Best effort: the part beyond EOF cannot be reserved without
            # moving EOF, so only the part below the current size is.
            end = min(offset + length, os.fstat(fd).st_size)
            if end > offset:
                os.posix_fallocate(fd, offset, end - offset)
        else:
            os.posix_fallocate(fd, offset, length)
    except OSError as exc:
        raise_oserror(exc, what)


def punch_hole(fd: int, offset: int, length: int) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length, min_length=1)
    try:
        os.fstat(fd)  # a closed fd is still BadFileDescriptor, as natively
    except OSError as exc:
        raise_oserror(exc, "punch hole")
    raise IOFailure(
        errno.EOPNOTSUPP,
        f"punch hole of {length} bytes at {offset}: needs the native extension",
    )


def sync_file_range(fd: int, offset: int, length: int) -> None:
    fd = check_fd("fd", fd)
    check_span(offset, length)
    # Fail where the kernel call would: a closed fd, or a pipe or socket.
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise_oserror(exc, "sync_file_range")
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or stat.S_ISDIR(mode)):
        raise_errno(errno.ESPIPE, "sync_file_range")


def fadvise(fd: int, offset: int, length: int, advice: Advice) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length)
    adv = check_advice(advice)
    try:
        os.posix_fadvise(fd, offset, length, int(adv))
    except OSError as exc:
        raise_oserror(exc, f"fadvise {adv.name}")


# One lock for every SharedWords in this process: fcntl record locks belong
# to the process, so they do not exclude two threads of it from each other.
_LOCK = threading.Lock()


def _reinit_lock_after_fork() -> None:
    # A thread of the parent may have held the lock when another forked.
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reinit_lock_after_fork)


class SharedWords(SharedWordsBase):
    """Lock-based atomics on little-endian uint64 words of a MAP_SHARED mmap.

    Each operation holds the process lock and an exclusive ``fcntl.lockf``
    lock on the word's 8 bytes of ``lock_fd``, which must be the backing file
    opened for writing. What must stay true for cross-process atomicity:

    * every process maps the file at the same file offset, so that buffer
      byte ``offset + 8*i`` names the same lock range everywhere;
    * every process uses this implementation (the extension's instructions
      do not take the lock);
    * no code in the process closes another fd of the same file while an
      operation runs: POSIX drops all of a process's locks on that file when
      any of its fds for it is closed.
    """

    def __init__(
        self,
        buf: mmap.mmap,
        lock_fd: int | None = None,
        offset: int = 0,
        count: int | None = None,
    ) -> None:
        if lock_fd is None:
            raise BadInput(
                "SharedWords without the native extension needs lock_fd, the "
                "backing file's fd, to lock words across processes"
            )
        self._lock_fd = check_fd("lock_fd", lock_fd)
        super().__init__(buf, lock_fd, offset, count)

    def _locked(self, i: object, op: Callable[[int], tuple[int, int]]) -> int:
        """Run ``op(old) -> (new, result)`` on word i atomically; return result."""
        idx = self._index(i)
        view = self._view
        assert view is not None  # _index refuses a closed view
        pos = self._offset + 8 * idx
        with _LOCK:
            try:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_EX, 8, pos, os.SEEK_SET)
            except OSError as exc:
                raise_oserror(exc, f"lock shared word {idx}")
            try:
                (old,) = _WORD.unpack_from(view, pos)
                new, result = op(old)
                if new != old:
                    _WORD.pack_into(view, pos, new)
            finally:
                fcntl.lockf(self._lock_fd, fcntl.LOCK_UN, 8, pos, os.SEEK_SET)
        return result

    def load(self, i: int) -> int:
        return self._locked(i, lambda old: (old, old))

    def store(self, i: int, v: int) -> None:
        value = self._value("value", v)
        self._locked(i, lambda old: (value, old))

    def fetch_add(self, i: int, delta: int) -> int:
        d = self._delta(delta)
        return self._locked(i, lambda old: ((old + d) & 0xFFFF_FFFF_FFFF_FFFF, old))

    def fetch_or(self, i: int, bits: int) -> int:
        b = self._value("bits", bits)
        return self._locked(i, lambda old: (old | b, old))

    def compare_exchange(self, i: int, expected: int, desired: int) -> tuple[bool, int]:
        exp = self._value("expected", expected)
        des = self._value("desired", desired)
        seen = self._locked(i, lambda old: (des if old == exp else old, old))
        return seen == exp, seen
