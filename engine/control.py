"""The shared control block: host-wide token buckets and disk reservations.

One small file, ``<data>/control``, is mmapped MAP_SHARED by the dfdaemon
coordinator and every worker, so a limit set for the host is one limit
whatever the number of processes moving bytes. Layout, little-endian uint64
words (engine.bitmap uses the same words)::

    word 0         MAGIC
    word 1         number of words (the layout's size check)
    words 2..4     upload bucket:   rate (bytes/s, 0 = unlimited), burst (bytes), E
    words 5..7     download bucket: rate, burst, E
    word 8         disk bytes reserved by all workers together
    words 9..      disk bytes reserved by worker slot i (for reclaiming after a crash)

Theory of the token bucket (GCRA in one word). A token bucket with ``rate``
r bytes/s and capacity C holds ``tokens(t) = min(C, r * (t - E))`` where E,
the *empty time*, is the moment the bucket was (or will be) empty. The pair
(tokens, last refill) therefore collapses into the single number E, which
fits one 64-bit word and is updated with one compare_exchange. Taking n
bytes at time t::

    start = max(E, t - C/r)        # a bucket never holds more than C
    E'    = start + n/r            # n bytes' worth of time further on
    wait  = max(0, E' - t)         # the exact deficit: sleep that long, once

The caller commits E' with compare_exchange (retrying on a lost race with
a fresh E) and then sleeps ``wait``: a reservation, not polling, and FIFO
across every process because E' only grows.

Why the total stays bounded across processes. Let the grants be ordered by
their successful compare_exchange; E'_k is strictly increasing in k and each
E'_k >= E'_{k-1} + n_k/r (max only raises it). A grant is used no earlier than
E'_k. Between two resets (steps where ``t - C/r`` won the max) the bytes
granted are at most r times the growth of E, and a reset at t_s starts from
``t_s - C/r``. By induction the bytes used up to time T are at most
``C + r * (T - t0)``, with t0 the first clock read. Costs round up to whole
nanoseconds, so rounding only tightens the bound. A process that read its
clock early and wins the race late only sees less refill (conservative).
The clock is CLOCK_MONOTONIC, which every process on the host shares; E is
stored with a bias of 2**62 ns so "long ago" (a full bucket) is positive.

A task's own limit (dfget --limit) is a LocalBucket with the same arithmetic
on a plain int, chained in front of the host bucket (``Chain``).

Disk reservations (``SharedDiskBudget``) use the same block so that every
worker's precheck sees every other worker's in-flight tasks; the coordinator
reclaims a dead worker's slot.
"""

from __future__ import annotations

import asyncio
import mmap
import os
import time
from collections.abc import Callable

import native
from engine.diskspace import DiskBudget, Reservation, free_bytes
from engine.errors import NotEnoughSpace, StoreError, from_oserror

MAGIC = int.from_bytes(b"DFCTRL01", "little")
SLOTS = 256
_UPLOAD, _DOWNLOAD = 2, 5
_DISK_TOTAL = 8
_DISK_SLOT0 = 9
WORDS = _DISK_SLOT0 + SLOTS
BIAS = 1 << 62
NS = 1_000_000_000
DEFAULT_BURST_SECONDS = 0.25
MIN_BURST = 256 << 10

Clock = Callable[[], int]


def gcra(empty_at: int, now: int, nbytes: int, rate: int, burst: int) -> tuple[int, int]:
    """One token-bucket step: ``(new empty time, nanoseconds to wait)``.

    Pure arithmetic on integers (ns, bytes, bytes/s); ``rate`` > 0.
    """
    cost = -(-nbytes * NS // rate)
    start = max(empty_at, now - (burst * NS) // rate)
    new = start + cost
    return new, max(0, new - now)


def default_burst(rate: int) -> int:
    """A quarter second of traffic, at least 256 KiB (one sendfile chunk
    larger than the burst just waits a little longer)."""
    return max(int(rate * DEFAULT_BURST_SECONDS), MIN_BURST)


async def sleep_until(deadline_ns: int, clock: Clock = time.monotonic_ns) -> None:
    """Sleep until the monotonic clock reaches ``deadline_ns``.

    Event-loop timers may fire up to a clock tick early; sleeping again for
    what is left (usually never) keeps the bucket's bound exact.
    """
    while (left := deadline_ns - clock()) > 0:
        await asyncio.sleep(left / NS)


class LocalBucket:
    """A token bucket private to one process (a per-task limit).

    Not thread-safe: one event loop owns it.
    """

    def __init__(self, rate: int, burst: int | None = None, clock: Clock = time.monotonic_ns,
                 *, full: bool = True):
        self.rate, self.clock = rate, clock
        self.burst = default_burst(rate) if burst is None else burst
        # Full: ``burst`` bytes may go at once. Empty (a per-download limit):
        # the first bytes already wait their share, so the download as a
        # whole never beats ``rate``.
        self._empty_at = -BIAS if full else clock()

    def reserve(self, nbytes: int) -> int:
        """Take ``nbytes`` now; return the deadline (clock ns) to wait for."""
        now = self.clock()
        if self.rate <= 0:
            return now
        self._empty_at, wait = gcra(self._empty_at, now, nbytes, self.rate, self.burst)
        return now + wait

    async def acquire(self, nbytes: int) -> None:
        await sleep_until(self.reserve(nbytes), self.clock)


class SharedBucket:
    """A token bucket whose state is three words of the control block."""

    def __init__(self, words, base: int, clock: Clock = time.monotonic_ns) -> None:
        self._words, self._base, self.clock = words, base, clock

    @property
    def rate(self) -> int:
        return self._words.load(self._base)

    @property
    def burst(self) -> int:
        return self._words.load(self._base + 1)

    def configure(self, rate: int, burst: int | None = None) -> None:
        """Set the limit (coordinator only, before workers start); 0 = unlimited."""
        self._words.store(self._base, max(0, rate))
        self._words.store(self._base + 1, default_burst(rate) if burst is None else burst)
        self._words.store(self._base + 2, 0)  # long ago: the bucket starts full

    def reserve(self, nbytes: int) -> int:
        """Take ``nbytes`` from the host-wide bucket; return the deadline to wait for."""
        rate = self._words.load(self._base)
        if rate == 0:
            return self.clock()
        burst = self._words.load(self._base + 1)
        slot = self._base + 2
        seen = self._words.load(slot)
        while True:
            now = self.clock()
            new, wait = gcra(seen - BIAS, now, nbytes, rate, burst)
            swapped, seen = self._words.compare_exchange(slot, seen, new + BIAS)
            if swapped:
                return now + wait

    async def acquire(self, nbytes: int) -> None:
        await sleep_until(self.reserve(nbytes), self.clock)


class Chain:
    """Several pacers in a row: a task's own limit, then the host's."""

    def __init__(self, *pacers) -> None:
        self.pacers = tuple(p for p in pacers if p is not None)

    async def acquire(self, nbytes: int) -> None:
        for pacer in self.pacers:
            await pacer.acquire(nbytes)


class ControlBlock:
    """The mapped control file. ``create`` (coordinator) or ``open`` (workers)."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap, clock: Clock = time.monotonic_ns):
        self.path, self._fd, self._mm = path, fd, mm
        self.words = native.SharedWords(mm, lock_fd=fd)
        self.upload = SharedBucket(self.words, _UPLOAD, clock)
        self.download = SharedBucket(self.words, _DOWNLOAD, clock)

    @classmethod
    def create(cls, path: str, clock: Clock = time.monotonic_ns) -> ControlBlock:
        """Write a fresh block and rename it into place.

        A fresh file (not a reset of the old one) so that a process still
        mapping a previous daemon's block can never disturb this one.
        """
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.ftruncate(fd, 8 * WORDS)
                os.pwrite(fd, WORDS.to_bytes(8, "little"), 8)
                os.pwrite(fd, MAGIC.to_bytes(8, "little"), 0)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            raise from_oserror(exc, f"creating control block {path}") from exc
        return cls.open(path, clock)

    @classmethod
    def open(cls, path: str, clock: Clock = time.monotonic_ns) -> ControlBlock:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise from_oserror(exc, f"opening control block {path}") from exc
        try:
            if os.fstat(fd).st_size != 8 * WORDS:
                raise StoreError(f"control block {path} has the wrong size")
            mm = mmap.mmap(fd, 8 * WORDS, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            raise from_oserror(exc, f"mapping control block {path}") from exc
        except BaseException:
            os.close(fd)
            raise
        block = cls(path, fd, mm, clock)
        if block.words.load(0) != MAGIC or block.words.load(1) != WORDS:
            block.close()
            raise StoreError(f"{path} is not a damselfly control block")
        return block

    def budget(self, slot: int, floor_bytes: int = 64 << 20) -> SharedDiskBudget:
        return SharedDiskBudget(self, slot, floor_bytes)

    def disk_reserved(self) -> int:
        return self.words.load(_DISK_TOTAL)

    def reclaim_slot(self, slot: int) -> int:
        """Give back what a dead worker had reserved; returns the bytes reclaimed."""
        word = _DISK_SLOT0 + slot
        seen = self.words.load(word)
        while True:
            swapped, seen_now = self.words.compare_exchange(word, seen, 0)
            if swapped:
                break
            seen = seen_now
        if seen:
            self.words.fetch_add(_DISK_TOTAL, -seen)
        return seen

    def close(self) -> None:
        if self._fd >= 0:
            self.words.close()
            self._mm.close()
            os.close(self._fd)
            self._fd = -1


class SharedDiskBudget(DiskBudget):
    """A DiskBudget whose reservations live in the control block.

    What must stay true: the total word is raised (compare_exchange, after the
    check) before the slot word, and lowered after it, so a worker that dies
    between the two steps leaves the total too high (a conservative leak
    until the daemon restarts), never too low.
    """

    def __init__(self, block: ControlBlock, slot: int, floor_bytes: int = 64 << 20) -> None:
        super().__init__(floor_bytes)
        if not 0 <= slot < SLOTS:
            raise StoreError(f"worker slot {slot} outside 0..{SLOTS - 1}")
        self._words, self._slot = block.words, _DISK_SLOT0 + slot

    @property
    def reserved(self) -> int:
        return self._words.load(_DISK_TOTAL)

    def reserve(self, path: str, key: str, now: int, later: int = 0) -> Reservation:
        needed = now + later
        seen = self._words.load(_DISK_TOTAL)
        while True:
            free = free_bytes(path)
            if needed + self.floor_bytes + seen > free:
                raise NotEnoughSpace(path, needed + self.floor_bytes, free, seen)
            swapped, seen = self._words.compare_exchange(_DISK_TOTAL, seen, seen + later)
            if swapped:
                break
        self._words.fetch_add(self._slot, later)
        return Reservation(self, key, later)

    def _release(self, reservation: Reservation) -> None:
        self._words.fetch_add(self._slot, -reservation.nbytes)
        self._words.fetch_add(_DISK_TOTAL, -reservation.nbytes)
