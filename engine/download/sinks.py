"""Where a piece's body goes as it arrives: two ways to land bytes in the task file.

A sink offers a buffer for the bytes at a body offset and is told how many
landed there; the receiver (engine.download.response) never knows which
kind it has.

- ``MemorySink``: the buffer *is* the piece's slice of the mmapped task
  file, so the kernel copies socket bytes straight into the page cache: one
  copy, but every first touch of a page is a page fault taken inside the
  socket receive (on ext4 a ``page_mkwrite`` per page of a fallocated file).
- ``FileSink``: the buffer is a reused bounce buffer (cache-hot, no faults);
  each full buffer is ``pwrite``-n at its offset and fed to a sha256: two
  copies, no faults, nothing mapped, and the piece is hashed from the bytes
  as they pass instead of being read back. This is the default. DESIGN.md
  asks for the one-copy receive into the mmap, but on the machines we have
  measured it loses: 512 MiB over a socketpair into a fallocated ext4 file
  took 405-476 MB/s into the mapping, 455-588 MB/s with MADV_POPULATE_WRITE
  first, and 2,269-2,363 MB/s through a 1 MiB bounce buffer and pwrite.
  The fault per first-touched page costs far more than the extra memcpy.
  ``receive="mmap"`` keeps the other path for filesystems where it wins.

Off the event loop. Given a ``writer`` (the downloader's disk thread), a
FileSink hands each full buffer over and goes on receiving into the next
one: the writer ``pwrite``-s it into the task file, a ``hasher`` thread
feeds it to the piece's sha256 and an ``exporter`` thread copies it into
the user's output files (engine.download.output), each on another core than
the socket receive where there is one. Where there is not (two cores or
fewer, ``default_disk_threads``), the hasher and the exporter are the
writer itself, and one job per buffer writes, hashes and exports it: three
thread handoffs per buffer cost more than they overlap when every core is
already busy (the lab, 10 hosts on 2 cores: the whole run took 16.73 and
16.93 CPU-s against 17.81 and 17.16 with three threads; the machine was
39 % busy against 41-42 % while the clients ran).

Each of these is a single thread that runs its jobs in submission order
(one thread doing all three keeps that order too), which is what keeps
this correct:
the hash sees a piece's bytes in order, and a job queued behind a piece's
last buffer finds its digest final (``sha256``); a retry of a piece is
written after every byte of an earlier, abandoned attempt, and the job
that verifies and publishes the piece (``verify_streamed`` in
engine.download.local) finds all of it in the file; an output marks a
piece exported only after writing all of it. A buffer goes back to the
pool when its last job has ended. At most ``depth`` buffers of a sink are
out; then ``starved`` is true and the connection stops reading from the
socket until one comes back (``on_room``), so a slow disk throttles the
sender through TCP instead of growing memory.

Writes into the task file go out with O_DIRECT where the filesystem takes
it (``TaskFile.direct_fd``) and the buffer is aligned (every buffer but a
piece's unaligned tail): straight from the page-aligned bounce buffer to
the device, no copy into the page cache. Filling fresh page cache was the
single largest cost of a download on the 2-core VM: in a perf profile of
a 2 GiB loopback transfer, the buffered pwrite's copy
(copy_folio_from_iter_atomic) was 27 % of both cores, more than the
sha256 (21 %); with O_DIRECT the transfer went from 332-380 to 475-541
MiB/s and from 3.4-3.8 to 1.8-2.1 CPU s/GiB. Upload reads then come from
the disk instead of memory, which a peer's network never outruns.

Other writes (unaligned tails, filesystems without O_DIRECT) go out
``WRITE_CHUNK`` (64 KiB) at a time. On ext4 the page cache
sizes its folios by the write, and on the 2-core VM large folios were slow
to fill: 2 GiB of new page cache written 1 MiB per pwrite took 1.2 GB/s,
64 KiB per pwrite 5.5 GB/s, 128 KiB 4.3-6.4 GB/s (the likely cause: large
free blocks are the ones the guest reports back to the hypervisor, which
then has to fault them in again). Small writes cost nothing measurable
where this does not happen.

Both kinds of sink are written only by the event loop (a thread touches a
buffer only between its submission and its return); ``close`` must be
called once the transport can no longer write into the buffer (an mmap
slice must be released before the mmap can be closed).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import TYPE_CHECKING

from engine.errors import from_oserror

if TYPE_CHECKING:
    from engine.download.output import OutputFile

BOUNCE = 1 << 20
WRITE_CHUNK = 64 << 10  # bytes per pwrite (see above)
DIRECT_ALIGN = 4096
DEPTH = 4          # buffers of one sink out on the threads at most
POOL_KEEP = 32     # idle bounce buffers a pool keeps (parallel x (DEPTH + 1) in use)


def default_disk_threads() -> int:
    """3 (disk, hash, export) where this process may use more than 2 cores, else 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return 3 if cores > 2 else 1


class MemorySink:
    """Body bytes land in ``target`` (a writable buffer as long as the piece)."""

    starved = False

    def __init__(self, target: memoryview | bytearray) -> None:
        self._view = memoryview(target).cast("B") if len(target) else memoryview(bytearray())
        self.length = len(self._view)

    def buffer(self, offset: int) -> memoryview:
        return self._view[offset:]

    def landed(self, offset: int, n: int) -> None:
        pass

    def on_room(self, callback: Callable[[], None]) -> None:
        callback()

    def close(self) -> None:
        self._view.release()


Buffer = bytearray | mmap.mmap


def anonymous(size: int) -> mmap.mmap:
    """A page-aligned buffer of private anonymous memory.

    Private, not ``mmap(-1, size)``'s shared mapping: those pages are shmem,
    and a first touch goes through the shmem page cache. Filling 1 MiB of
    fresh pages took 0.95 ms shared against 0.58 ms private on the 2-core
    VM (0.04 ms once faulted in); in a perf profile of 40 hosts the shmem
    faults taken inside socket reads were 2.5 % of the machine.
    """
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class BouncePool:
    """Bounce buffers for reuse: a fresh 1 MiB bytearray per piece would
    fault in fresh pages every time. One event loop owns it."""

    def __init__(self, size: int = BOUNCE, keep: int = POOL_KEEP) -> None:
        self.size, self.keep = size, keep
        self._free: list[bytearray] = []

    def take(self) -> mmap.mmap:
        # Anonymous mappings are page-aligned, which O_DIRECT writes of the
        # buffer need (engine.download.output).
        return self._free.pop() if self._free else anonymous(self.size)

    def give(self, buf: mmap.mmap) -> None:
        if len(buf) == self.size and len(self._free) < self.keep:
            self._free.append(buf)


class FileSink:
    """Body bytes go through bounce buffers and are written to ``fd`` at ``start``.

    Without a ``writer`` each full buffer is hashed and written (into the
    task file and ``outputs``) inline; with one, on the threads (see the
    module docstring). ``sha256()`` is the digest of every byte written,
    valid once all of them are hashed: inline, when the body is complete;
    else in a job on the ``hasher`` queued after it (on the writer, when the
    sink has no hasher of its own: its write jobs hash). ``error`` is the
    OSError a write to ``fd`` hit, if any (then the digest is moot).
    """

    def __init__(self, fd: int, start: int, length: int, bounce: int = BOUNCE, *,
                 direct: int = -1,
                 writer: Executor | None = None, hasher: Executor | None = None,
                 exporter: Executor | None = None, pool: BouncePool | None = None,
                 depth: int = DEPTH, outputs: tuple[OutputFile, ...] = (),
                 near: tuple[int, Callable[[], None]] | None = None) -> None:
        self.fd, self.start, self.length = fd, start, length
        self.direct = direct
        self.outputs = outputs
        self.error: OSError | None = None
        self._near = near  # (body offset, callback): called once, when bytes pass it
        self._hash = hashlib.sha256()
        self._writer, self._depth = writer, depth
        # A hasher or exporter that is the writer itself: the write job does it.
        self.hasher = hasher if writer is not None and hasher is not writer else None
        self._exporter = (exporter if writer is not None and outputs and exporter is not writer
                          else None)
        self._pool = pool if pool is not None and pool.size == bounce else None
        self._size = max(1, min(bounce, length))
        self._fill = 0      # bytes waiting in the current buffer
        self._flushed = 0   # body bytes handed on (written, or queued for writing)
        self._out = 0       # buffers handed to the threads and not back yet
        self._buf: Buffer | None = self._take()
        self._closed = False
        self._room: Callable[[], None] | None = None
        self._loop = asyncio.get_running_loop() if writer is not None else None

    @property
    def starved(self) -> bool:
        """True while ``depth`` buffers are out and the current one is full."""
        return self._buf is None

    def on_room(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the sink can take bytes again (at once if it can)."""
        if self._buf is not None or self._closed:
            callback()
        else:
            self._room = callback

    def buffer(self, offset: int) -> memoryview:
        if self._buf is None:  # the connection did not pause: grow rather than fail
            self._buf = self._take(force=True)
        room = min(len(self._buf) - self._fill, self.length - offset)
        return memoryview(self._buf)[self._fill:self._fill + room]

    def landed(self, offset: int, n: int) -> None:
        self._fill += n
        if self._fill == len(self._buf) or offset + n == self.length:
            self._flush()
        if self._near is not None and offset + n >= self._near[0]:
            near, self._near = self._near[1], None
            near()

    def sha256(self) -> str:
        """The digest so far; see the class docstring for when it is final."""
        return self._hash.hexdigest()

    def exported(self, index: int) -> None:
        """The piece (``index``) is verified: mark it in the outputs, after
        every write of it (on the exporter, which runs jobs in order)."""
        if not self.outputs:
            return
        if self._exporter is None:
            _mark(self.outputs, index, self.start, self.length)
        else:
            self._exporter.submit(_mark, self.outputs, index, self.start, self.length)

    def close(self) -> None:
        self._closed = True
        if self._buf is not None:
            self._give(self._buf)
            self._buf = None
        self._room = None

    # -- internals

    def _take(self, force: bool = False) -> Buffer | None:
        if self._writer is not None and self._out >= self._depth and not force:
            return None
        if self._pool is not None:
            return self._pool.take()
        return bytearray(self._size)

    def _give(self, buf: Buffer) -> None:
        if self._pool is not None:
            self._pool.give(buf)

    def _flush(self) -> None:
        buf, fill = self._buf, self._fill
        position = self.start + self._flushed
        self._flushed += fill
        self._fill = 0
        if self._writer is None:
            _hash(self, buf, fill)
            _write(self, buf, fill, position)
            _export(self, buf, fill, position)
            if self.error is not None:
                raise from_oserror(self.error, "writing a piece") from self.error
            return
        self._out += 1
        self._buf = None
        jobs = [self._writer.submit(_write, self, buf, fill, position)]
        if self.hasher is not None:
            jobs.append(self.hasher.submit(_hash, self, buf, fill))
        if self._exporter is not None:
            jobs.append(self._exporter.submit(_export, self, buf, fill, position))
        back = _Back(self._loop, self._returned, buf, len(jobs))
        for job in jobs:
            job.add_done_callback(back)
        self._buf = self._take()

    def _returned(self, buf: Buffer) -> None:
        self._out -= 1
        if self._closed:
            self._give(buf)
            return
        if self._buf is None:
            self._buf = buf
            room, self._room = self._room, None
            if room is not None:
                room()
        else:
            self._give(buf)


class _Back:
    """Hands a buffer back to its sink, on the loop, once its last job has ended."""

    __slots__ = ("buf", "left", "lock", "loop", "returned")

    def __init__(self, loop: asyncio.AbstractEventLoop, returned: Callable[[Buffer], None],
                 buf: Buffer, jobs: int) -> None:
        self.loop, self.returned, self.buf, self.left = loop, returned, buf, jobs
        self.lock = threading.Lock()

    def __call__(self, _future) -> None:
        with self.lock:  # the jobs end on different threads
            self.left -= 1
            if self.left:
                return
        try:
            self.loop.call_soon_threadsafe(self.returned, self.buf)
        except RuntimeError:
            pass  # the loop is closed: nobody needs the buffer back


def _hash(sink: FileSink, buf: Buffer, fill: int) -> None:
    with memoryview(buf)[:fill] as view:
        sink._hash.update(view)


def _write(sink: FileSink, buf: Buffer, fill: int, position: int) -> None:
    """Write ``buf[:fill]`` at ``position`` of the task file (hashing it here
    when there is no hasher, and exporting it when there is no exporter);
    an error is recorded on the sink."""
    if sink.error is not None:
        return
    threaded = sink._writer is not None
    with memoryview(buf)[:fill] as view:
        if threaded and sink.hasher is None:
            sink._hash.update(view)
        at = position
        try:
            if sink.direct >= 0 and not (position | fill) % DIRECT_ALIGN:
                try:
                    at += os.pwrite(sink.direct, view, position)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    sink.direct = -1  # not aligned for this device: buffered from now on
            while at < position + fill:
                with view[at - position:at - position + WRITE_CHUNK] as chunk:
                    at += os.pwrite(sink.fd, chunk, at)
        except OSError as exc:
            sink.error = exc
            return
    if threaded and sink._exporter is None:
        _export(sink, buf, fill, position)


def _export(sink: FileSink, buf: Buffer, fill: int, position: int) -> None:
    """Write ``buf[:fill]`` into the sink's outputs (each records its own error)."""
    if not sink.outputs:
        return
    with memoryview(buf)[:fill] as view:
        for output in sink.outputs:
            output.write(sink.fd, view, position)


def _mark(outputs: tuple[OutputFile, ...], index: int, start: int, length: int) -> None:
    for output in outputs:
        output.mark(index, start, length)
