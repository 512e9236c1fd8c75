"""What the extension and the fallback share: argument checks, errno mapping,
the ``Advice`` enum and the bookkeeping half of ``SharedWords``.

Every check runs in Python before any C call, so C code only ever sees
non-negative fds, offsets and lengths whose sum fits in a signed 64-bit
``off_t``, and word indexes inside the buffer. Both implementations raise
the same classes for the same bad input because they call the same checks.
"""

from __future__ import annotations

import abc
import enum
import errno
import mmap
import os
from typing import NoReturn

from engine.errors import BadFileDescriptor, BadInput, from_oserror

MAX_OFF = 2**63 - 1
"""Largest offset, length or offset + length (the kernel's ``off_t``)."""

MAX_FD = 2**31 - 1
WORD_MAX = 2**64 - 1
"""Shared words are unsigned 64-bit; arithmetic on them wraps modulo 2**64."""


class Advice(enum.IntEnum):
    """``posix_fadvise`` advice; values are this platform's ``POSIX_FADV_*``."""

    NORMAL = os.POSIX_FADV_NORMAL
    SEQUENTIAL = os.POSIX_FADV_SEQUENTIAL
    RANDOM = os.POSIX_FADV_RANDOM
    WILLNEED = os.POSIX_FADV_WILLNEED
    DONTNEED = os.POSIX_FADV_DONTNEED
    NOREUSE = os.POSIX_FADV_NOREUSE


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise BadInput(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)


def check_fd(name: str, fd: object) -> int:
    """An fd must be an int; a negative one is a closed fd (sockets say -1)."""
    if isinstance(fd, bool) or not isinstance(fd, int):
        raise BadInput(f"{name} must be an int file descriptor, not {type(fd).__name__}")
    if not 0 <= fd <= MAX_FD:
        raise BadFileDescriptor(errno.EBADF, f"{name}: {fd} is not an open file descriptor")
    return int(fd)


def check_span(offset: object, length: object, *, min_length: int = 0) -> tuple[int, int]:
    """Check an (offset, length) pair whose end must still fit in ``off_t``."""
    off = check_int("offset", offset, 0, MAX_OFF)
    n = check_int("length", length, min_length, MAX_OFF)
    if off + n > MAX_OFF:
        raise BadInput(f"offset + length overflows a 64-bit file offset: {off} + {n}")
    return off, n


def check_advice(advice: object) -> Advice:
    if isinstance(advice, bool) or not isinstance(advice, int):
        raise BadInput(f"advice must be an Advice, not {type(advice).__name__}")
    try:
        return Advice(advice)
    except ValueError as exc:
        raise BadInput(f"unknown fadvise advice {advice!r}") from exc


def raise_errno(err: int, what: str) -> NoReturn:
    """Raise the hierarchy's error for an errno returned by C."""
    exc = OSError(err, os.strerror(err))
    raise from_oserror(exc, what) from exc


def raise_oserror(exc: OSError, what: str) -> NoReturn:
    raise from_oserror(exc, what) from exc


class SharedWordsBase(abc.ABC):
    """Bounds, value checks and lifetime of a view of uint64 words in a buffer.

    What must stay true:
      * while the view is open it holds a buffer export on ``buf``, so the mmap
        cannot be closed or resized underneath it (``mmap.close()`` raises
        ``BufferError``); ``close()`` the view first, or use it as a context
        manager;
      * a closed view, a closed mmap or a read-only buffer give ``BadInput``,
        never a crash;
      * indexes are ``0 <= i < len(self)``; negative indexes are refused.

    The operations are thread-safe and process-safe (that is their point);
    ``close()`` is not: closing while another thread still operates on the
    view is the caller's bug, as with any file object.
    """

    def __init__(
        self,
        buf: mmap.mmap,
        lock_fd: int | None = None,
        offset: int = 0,
        count: int | None = None,
    ) -> None:
        self._view: memoryview | None = None
        off = check_int("offset", offset, 0, MAX_OFF)
        if off % 8:
            raise BadInput(f"offset must be a multiple of 8, got {off}")
        try:
            view = memoryview(buf)
        except ValueError as exc:  # a closed mmap refuses new exports
            raise BadInput(f"cannot view shared words: {exc}") from exc
        except TypeError as exc:
            raise BadInput(f"shared words need a writable buffer: {exc}") from exc
        if view.readonly:
            view.release()
            raise BadInput("shared words need a writable buffer (mmap opened read-only)")
        size = view.nbytes
        if count is None:
            n = max(0, (size - off) // 8)
        else:
            n = check_int("count", count, 0, MAX_OFF // 8)
        if off + 8 * n > size:
            view.release()
            raise BadInput(f"{n} words at byte {off} do not fit in a {size}-byte buffer")
        self._buf = buf
        self._view = view
        self._offset = off
        self._count = n

    def __len__(self) -> int:
        return self._count

    @property
    def closed(self) -> bool:
        return self._view is None

    def close(self) -> None:
        """Drop the buffer export; the mmap can be closed afterwards. Idempotent."""
        if self._view is not None:
            self._release()
            self._view.release()
            self._view = None

    def _release(self) -> None:
        """Subclasses drop their own references to the buffer here."""

    def __enter__(self) -> SharedWordsBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _index(self, i: object) -> int:
        if self._view is None:
            raise BadInput("shared words are closed")
        if isinstance(i, bool) or not isinstance(i, int):
            raise BadInput(f"word index must be an int, not {type(i).__name__}")
        if not 0 <= i < self._count:
            raise BadInput(f"word index {i} out of range for {self._count} words")
        return int(i)

    @abc.abstractmethod
    def load(self, i: int) -> int:
        """Return word i."""

    @abc.abstractmethod
    def store(self, i: int, v: int) -> None:
        """Set word i to v, 0 <= v < 2**64."""

    @abc.abstractmethod
    def fetch_add(self, i: int, delta: int) -> int:
        """Add delta (mod 2**64; negative subtracts) to word i; return the old value."""

    @abc.abstractmethod
    def fetch_or(self, i: int, bits: int) -> int:
        """OR bits into word i; return the old value."""

    @abc.abstractmethod
    def compare_exchange(self, i: int, expected: int, desired: int) -> tuple[bool, int]:
        """Set word i to desired if it holds expected; return (exchanged, value seen)."""

    @staticmethod
    def _value(name: str, v: object) -> int:
        return check_int(name, v, 0, WORD_MAX)

    @staticmethod
    def _delta(delta: object) -> int:
        """A delta in (-2**64, 2**64) becomes its unsigned residue mod 2**64."""
        return check_int("delta", delta, -WORD_MAX, WORD_MAX) & WORD_MAX
