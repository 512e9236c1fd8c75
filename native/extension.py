"""The compiled implementation: thin wrappers around ``native._native``.

Importing this module raises ImportError when the extension was not built;
``native/__init__.py`` catches that and falls back. Each wrapper validates in
Python (``native._common``), makes one C call (cffi releases the GIL for its
duration) and maps a negative errno into ``engine.errors``.

The contracts are documented once, in ``native/__init__.py``; this module and
``native.fallback`` must keep to them identically, and the unit tests run both.
"""

from __future__ import annotations

import errno
import mmap
import sys

from engine.errors import BadInput
from native._common import (
    Advice,
    SharedWordsBase,
    check_advice,
    check_fd,
    check_span,
    raise_errno,
)
from native._native import ffi, lib

if sys.byteorder != "little":  # pragma: no cover - the words are little-endian on disk
    raise ImportError("native atomics assume a little-endian host")

__all__ = [
    "Advice",
    "SharedWords",
    "fadvise",
    "fallocate",
    "punch_hole",
    "sendfile",
    "sync_file_range",
]


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    out_fd = check_fd("out_fd", out_fd)
    in_fd = check_fd("in_fd", in_fd)
    offset, count = check_span(offset, count)
    err = ffi.new("int *")
    total = 0
    # Each pass through this loop is back in Python, so pending signal
    # handlers run here and may raise (KeyboardInterrupt); if none does,
    # sending carries on, as PEP 475 has it for the os module.
    while total < count:
        sent = lib.dfn_sendfile(out_fd, in_fd, offset + total, count - total, err)
        total += sent
        code = err[0]
        if code == 0:
            if sent == 0:  # EOF of in_fd
                break
            continue  # done, or short: ask again to tell EOF from a signal
        if code == errno.EINTR:
            continue
        if code in (errno.EAGAIN, errno.EWOULDBLOCK):
            break
        raise_errno(code, f"sendfile after {total} bytes")
    return total


def fallocate(fd: int, offset: int, length: int, keep_size: bool = False) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length, min_length=1)
    rc = lib.dfn_fallocate(fd, 1 if keep_size else 0, offset, length)
    if rc:
        raise_errno(-rc, f"fallocate {length} bytes at {offset}")


def punch_hole(fd: int, offset: int, length: int) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length, min_length=1)
    rc = lib.dfn_punch_hole(fd, offset, length)
    if rc:
        raise_errno(-rc, f"punch hole of {length} bytes at {offset}")


def sync_file_range(fd: int, offset: int, length: int) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length)
    rc = lib.dfn_sync_file_range(fd, offset, length)
    if rc:
        raise_errno(-rc, f"sync_file_range {length} bytes at {offset}")


def fadvise(fd: int, offset: int, length: int, advice: Advice) -> None:
    fd = check_fd("fd", fd)
    offset, length = check_span(offset, length)
    adv = check_advice(advice)
    rc = lib.dfn_fadvise(fd, offset, length, int(adv))
    if rc:
        raise_errno(-rc, f"fadvise {adv.name}")


class SharedWords(SharedWordsBase):
    """Lock-free SEQ_CST atomics (``__atomic_*``) on words of a shared buffer.

    ``lock_fd`` is accepted for signature parity with the fallback and
    ignored: hardware atomics on MAP_SHARED memory are atomic across
    processes. Every process sharing the words must use this implementation
    too; the fallback's locks do not exclude these instructions.
    """

    def __init__(
        self,
        buf: mmap.mmap,
        lock_fd: int | None = None,
        offset: int = 0,
        count: int | None = None,
    ) -> None:
        super().__init__(buf, lock_fd, offset, count)
        try:
            self._cbuf = ffi.from_buffer(buf, require_writable=True)
        except (TypeError, ValueError, BufferError) as exc:
            self.close()
            raise BadInput(f"cannot view shared words: {exc}") from exc
        self._base = ffi.cast("uint64_t *", self._cbuf + self._offset)
        if int(ffi.cast("uintptr_t", self._base)) % 8:
            self.close()
            raise BadInput("shared words must be 8-byte aligned in memory")

    def _release(self) -> None:
        cbuf = getattr(self, "_cbuf", None)
        if cbuf is not None:
            ffi.release(cbuf)
            self._cbuf = None
        self._base = ffi.NULL

    def load(self, i: int) -> int:
        return int(lib.dfn_load(self._base, self._index(i)))

    def store(self, i: int, v: int) -> None:
        lib.dfn_store(self._base, self._index(i), self._value("value", v))

    def fetch_add(self, i: int, delta: int) -> int:
        return int(lib.dfn_fetch_add(self._base, self._index(i), self._delta(delta)))

    def fetch_or(self, i: int, bits: int) -> int:
        return int(lib.dfn_fetch_or(self._base, self._index(i), self._value("bits", bits)))

    def compare_exchange(self, i: int, expected: int, desired: int) -> tuple[bool, int]:
        idx = self._index(i)
        exp = self._value("expected", expected)
        seen = int(lib.dfn_compare_exchange(self._base, idx, exp, self._value("desired", desired)))
        return seen == exp, seen
