"""Native helpers for the data path, behind a thin typed facade.

Theory of operation. ``native._native`` is a cffi extension (API mode,
compiled by ``pip install`` through ``native/build.py``) wrapping a few Linux
calls the standard library lacks or does badly from Python: a sendfile loop
that runs without the GIL, fallocate with KEEP_SIZE / PUNCH_HOLE,
sync_file_range, and 64-bit atomics on shared memory. ``native.extension``
wraps it; ``native.fallback`` does the same with the standard library. This
module picks one at import time and documents the contract both keep:

* ``NATIVE`` is True when the extension loaded and the kill switch
  ``DAMSELFLY_NO_NATIVE`` is unset, empty or ``0``; any other value (say
  ``1``) skips loading it. ``LOAD_ERROR`` says why NATIVE is False.
* ``extension`` (None when not loaded) and ``fallback`` are the two
  implementation modules, with the same names, so tests can run both in one
  process.
* Every argument is checked in Python before any C call: a non-int (bools
  included), a negative offset or length, or an offset + length past
  2**63 - 1 raises ``BadInput``; a negative fd raises ``BadFileDescriptor``.
* An OS error becomes ``engine.errors.from_oserror(...)`` raised ``from`` the
  OSError: EBADF -> BadFileDescriptor, ENOSPC/EDQUOT -> DiskFull, EPIPE /
  ECONNRESET -> BrokenByPeer, EINVAL/ESPIPE/ENOTSOCK -> BadInput, the rest
  IOFailure with its errno. Nothing here may crash the interpreter.
* Every process sharing ``SharedWords`` must use the same implementation:
  the fallback's locks do not exclude the extension's atomic instructions.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from native import fallback
from native._common import Advice, SharedWordsBase

__all__ = [
    "LOAD_ERROR",
    "NATIVE",
    "Advice",
    "SharedWords",
    "extension",
    "fadvise",
    "fallback",
    "fallocate",
    "punch_hole",
    "sendfile",
    "sync_file_range",
]

extension: ModuleType | None = None
LOAD_ERROR: str | None = None

if os.environ.get("DAMSELFLY_NO_NATIVE", "") not in ("", "0"):
    LOAD_ERROR = "disabled by DAMSELFLY_NO_NATIVE"
else:
    try:
        # Not "from native import extension": that would find the None above.
        extension = importlib.import_module("native.extension")
    except ImportError as exc:  # not built, or built for another interpreter
        LOAD_ERROR = f"native extension not available: {exc}"

NATIVE: bool = extension is not None
_impl: ModuleType = extension if extension is not None else fallback


def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
    """Send ``count`` bytes of ``in_fd`` from ``offset`` to ``out_fd``; return how many.

    The loop over partial sends runs in C without the GIL. The file offset
    of ``in_fd`` is not moved. What the count means:

    * == count: everything was sent;
    * < count on a blocking ``out_fd``: ``in_fd`` hit EOF. Never a silent
      short write: any other failure raises;
    * < count on a non-blocking ``out_fd`` (possibly 0): the socket buffer is
      full (EAGAIN); wait for writability and call again for the rest. EOF
      also gives a short count, so callers must not ask for bytes past the
      end of the file (the piece store knows every length).

    An error after some bytes went out raises all the same (the connection
    is unusable). A signal hands control back to Python between sends, so
    its handler runs even while the send is blocked on a slow peer (Ctrl-C
    works); if the handler does not raise, sending resumes.
    """
    sent: int = _impl.sendfile(out_fd, in_fd, offset, count)
    return sent


def fallocate(fd: int, offset: int, length: int, keep_size: bool = False) -> None:
    """Reserve disk blocks for ``[offset, offset + length)``; ``length`` >= 1.

    Without ``keep_size`` the file grows to at least ``offset + length``.
    With it the size never changes and blocks past EOF are reserved too --
    except in the fallback, which can only reserve the part below the
    current size (documented best effort). ENOSPC raises ``DiskFull``.
    """
    _impl.fallocate(fd, offset, length, keep_size)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the blocks of ``[offset, offset + length)`` back; the size never changes.

    Reads of the range return zeros afterwards. The fallback cannot do this
    and raises ``IOFailure`` with ``errno.EOPNOTSUPP``, the same error a
    filesystem without hole punching gives; callers treat both as "the space
    comes back only when the file is deleted". It never writes zeros, which
    would allocate the very space it was asked to free.
    """
    _impl.punch_hole(fd, offset, length)


def sync_file_range(fd: int, offset: int, length: int) -> None:
    """Start writeback of the range's dirty pages and return at once.

    SYNC_FILE_RANGE_WRITE only: it never waits, and it is not durability
    (no fsync of metadata). ``length`` 0 means through the end of the file.
    The fallback only checks the fd: the kernel writes back on its own.
    """
    _impl.sync_file_range(fd, offset, length)


def fadvise(fd: int, offset: int, length: int, advice: Advice) -> None:
    """``posix_fadvise``; ``length`` 0 means through the end of the file."""
    _impl.fadvise(fd, offset, length, advice)


SharedWords: type[SharedWordsBase] = _impl.SharedWords
"""View ``count`` little-endian uint64 words at byte ``offset`` of ``buf``.

``SharedWords(buf, lock_fd=None, offset=0, count=None)``: ``offset`` must be
a multiple of 8; ``count`` defaults to as many whole words as fit. Methods
``load``, ``store``, ``fetch_add`` (returns the old value), ``fetch_or``
(old value) and ``compare_exchange`` (``(exchanged, value_seen)``), all
sequentially consistent. Values are unsigned 64-bit; ``fetch_add`` wraps
modulo 2**64 and takes a negative delta as subtraction. An index outside
``[0, len)`` or a value outside ``[0, 2**64)`` raises ``BadInput``.

The view holds a buffer export on the mmap until ``close()`` (or the end of
its ``with`` block), so the mmap cannot be closed underneath it. The
fallback needs ``lock_fd`` (the backing file, opened for writing) and
raises ``BadInput`` without it; the extension ignores it.
"""
