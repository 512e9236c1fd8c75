"""Benchmark the native data-path helpers over loopback TCP.

    python perf/bench_native.py [--size-mib N] [--chunk-kib K] [--repeat R]

Send side: one file (random bytes, in the page cache) is sent to a receiver
process that drains the socket, three ways, in calls of ``--chunk-kib``
(a piece, by default): native ``sendfile`` (C loop without the GIL),
``os.sendfile`` in a Python loop (the baseline, which is also the fallback),
and ``readinto`` + ``sendall``. A run is timed from the first byte handed
over to the receiver closing its end after EOF.

Receive side: a sender process pushes the same file with ``os.sendfile``;
an asyncio server (uvloop when installed) writes it into a preallocated
MAP_SHARED mmap of a task file, two ways: a ``BufferedProtocol`` whose
``get_buffer`` returns the mmap slice at the current offset (one kernel copy,
as the download path does), and a ``Protocol`` whose ``data_received`` bytes
are copied into the mmap (the baseline). Timed from ``connection_made`` to
EOF; windows of the destination are checked against the source every run.

Methods run interleaved, each ``--repeat`` times; the table shows the best.
Everything is created in a temporary directory and removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import multiprocessing
import os
import platform
import random
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, cast

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import native  # noqa: E402

MiB = 1 << 20


class Sample(NamedTuple):
    rate: float  # bytes per second, wall clock
    cpu_ns_per_byte: float  # CPU time of the measuring thread (user + system)


_FORK = multiprocessing.get_context("fork")


def make_source(path: Path, size: int) -> None:
    """Random-looking bytes, rotated per MiB so no two MiB are alike."""
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for _ in range(-(-size // MiB)):
            k = random.randrange(MiB)
            f.write(block[k:] + block[:k])
        f.truncate(size)


# --- send side -------------------------------------------------------------


def _drain(port: int) -> None:
    """Discard everything with splice(2) (no copy to user space), so the
    receiver is as cheap as it can be and the sender's cost shows."""
    r, w = os.pipe()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            while n := os.splice(s.fileno(), w, MiB):
                while n:
                    n -= os.splice(r, null, n)
    finally:
        for fd in (r, w, null):
            os.close(fd)


def _send_native(sock: socket.socket, fd: int, size: int, chunk: int) -> None:
    assert native.extension is not None
    for off in range(0, size, chunk):
        native.extension.sendfile(sock.fileno(), fd, off, min(chunk, size - off))


def _send_os(sock: socket.socket, fd: int, size: int, chunk: int) -> None:
    for off in range(0, size, chunk):
        native.fallback.sendfile(sock.fileno(), fd, off, min(chunk, size - off))


def _send_read(sock: socket.socket, fd: int, size: int, chunk: int) -> None:
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(fd, "rb", buffering=0, closefd=False) as f:
        while n := f.readinto(buf):
            sock.sendall(view[:n])


def time_send(
    send: Callable[[socket.socket, int, int, int], None], path: Path, chunk: int
) -> Sample:
    size = path.stat().st_size
    with socket.create_server(("127.0.0.1", 0)) as server:
        receiver = _FORK.Process(target=_drain, args=(server.getsockname()[1],))
        receiver.start()
        conn, _ = server.accept()
        with conn, open(path, "rb") as f:
            t0, c0 = time.perf_counter(), time.thread_time()
            send(conn, f.fileno(), size, chunk)
            cpu = time.thread_time() - c0
            conn.shutdown(socket.SHUT_WR)
            conn.recv(1)  # b"" once the receiver has drained everything
            elapsed = time.perf_counter() - t0
        receiver.join()
        receiver.close()
    return Sample(size / elapsed, cpu * 1e9 / size)


# --- receive side ------------------------------------------------------------


def _push(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
        s.recv(1)  # the server says go once its protocol is in place
        size = os.fstat(f.fileno()).st_size
        sent = 0
        while sent < size:
            sent += os.sendfile(s.fileno(), f.fileno(), sent, size - sent)


class _Receiver(asyncio.BaseProtocol):
    """Shared bookkeeping: when the transfer started, ended, and how much came."""

    def __init__(self, view: memoryview, done: asyncio.Future[Sample]) -> None:
        self.view, self.done, self.pos, self.t0, self.c0 = view, done, 0, 0.0, 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t0, self.c0 = time.perf_counter(), time.thread_time()
        cast(asyncio.WriteTransport, transport).write(b"g")  # uvloop's are not subclasses

    def eof_received(self) -> bool:
        if not self.done.done():
            if self.pos == len(self.view):
                n = len(self.view)
                elapsed = time.perf_counter() - self.t0
                cpu = time.thread_time() - self.c0
                self.done.set_result(Sample(n / elapsed, cpu * 1e9 / n))
            else:
                self.done.set_exception(RuntimeError(f"short transfer: {self.pos} bytes"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or RuntimeError("connection lost"))


class IntoMmap(_Receiver, asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> memoryview:
        if self.pos == len(self.view):
            return memoryview(bytearray(1))  # more than announced: counted as an error
        return self.view[self.pos :]

    def buffer_updated(self, nbytes: int) -> None:
        self.pos += nbytes


class BytesThenCopy(_Receiver, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        end = self.pos + len(data)
        self.view[self.pos : end] = data
        self.pos = end


def time_receive(
    loop: asyncio.AbstractEventLoop, proto: type[_Receiver], src: Path, dst: mmap.mmap
) -> Sample:
    size = len(dst)
    probes = [random.randrange(0, size - 65536) for _ in range(32)] if size > 65536 else [0]
    for at in probes:
        dst[at : at + 65536] = bytes(len(dst[at : at + 65536]))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pusher = _FORK.Process(target=_push, args=(listener.getsockname()[1], str(src)))
        pusher.start()
        view = memoryview(dst)
        try:
            sample = loop.run_until_complete(_serve(loop, proto, listener, view))
        finally:
            view.release()
            pusher.join()
            pusher.close()
    with open(src, "rb") as f:
        for at in probes:
            if os.pread(f.fileno(), 65536, at) != dst[at : at + 65536]:
                raise RuntimeError(f"{proto.__name__}: bytes at {at} differ from the source")
    return sample


async def _serve(
    loop: asyncio.AbstractEventLoop,
    proto: type[_Receiver],
    listener: socket.socket,
    view: memoryview,
) -> Sample:
    done: asyncio.Future[Sample] = loop.create_future()
    server = await loop.create_server(lambda: proto(view, done), sock=listener)
    try:
        return await asyncio.wait_for(done, 60)
    finally:
        server.close()
        await server.wait_closed()


# --- driver --------------------------------------------------------------------


def best(fns: dict[str, Callable[[], Sample]], repeat: int) -> dict[str, Sample]:
    """Best rate and least CPU per byte of each method over ``repeat`` runs."""
    results: dict[str, list[Sample]] = {name: [] for name in fns}
    for _ in range(repeat):  # interleaved, so drift hits every method alike
        for name, fn in fns.items():
            results[name].append(fn())
    return {
        name: Sample(max(s.rate for s in runs), min(s.cpu_ns_per_byte for s in runs))
        for name, runs in results.items()
    }


def table(title: str, rates: dict[str, Sample], baseline: str, cpu_label: str) -> str:
    width = max(len(n) for n in rates) + 2
    base = rates[baseline]
    lines = [
        title,
        f"  {'method':<{width}}{'MB/s':>8}{'vs ' + baseline:>18}"
        f"{cpu_label:>22}{'vs ' + baseline:>18}",
    ]
    for name, s in rates.items():
        lines.append(
            f"  {name:<{width}}{s.rate / 1e6:>8.0f}{s.rate / base.rate:>17.2f}x"
            f"{s.cpu_ns_per_byte * 1e3:>22.0f}{s.cpu_ns_per_byte / base.cpu_ns_per_byte:>17.2f}x"
        )
    return "\n".join(lines)


def new_loop() -> tuple[asyncio.AbstractEventLoop, str]:
    try:
        import uvloop
    except ImportError:
        return (
            asyncio.new_event_loop(),
            f"asyncio default loop (Python {platform.python_version()})",
        )
    return uvloop.new_event_loop(), f"uvloop {getattr(uvloop, '__version__', '?')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (default 1024)")
    parser.add_argument(
        "--chunk-kib", type=int, default=4096, help="bytes per send call (default 4096)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; best is shown")
    args = parser.parse_args(argv)
    size, chunk = args.size_mib * MiB, args.chunk_kib * 1024
    print(
        f"damselfly native bench: {args.size_mib} MiB over loopback TCP, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}, "
        f"native {'on' if native.NATIVE else 'OFF: ' + str(native.LOAD_ERROR)}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-native-") as tmp:
        src = Path(tmp) / "source"
        make_source(src, size)
        sends: dict[str, Callable[[], Sample]] = {}
        if native.extension is not None:
            sends["native.sendfile"] = lambda: time_send(_send_native, src, chunk)
        sends["os.sendfile"] = lambda: time_send(_send_os, src, chunk)
        sends["readinto+sendall"] = lambda: time_send(_send_read, src, chunk)
        rates = best(sends, args.repeat)
        print()
        title = f"send, {args.chunk_kib} KiB per call, best of {args.repeat}"
        print(table(title, rates, "os.sendfile", "sender CPU ms/GB"))

        loop, loop_name = new_loop()
        fd = os.open(Path(tmp) / "task-data", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            native.fallocate(fd, 0, size)
            with mmap.mmap(fd, size) as dst:
                recvs: dict[str, Callable[[], Sample]] = {
                    "BufferedProtocol->mmap": lambda: time_receive(loop, IntoMmap, src, dst),
                    "bytes+copy": lambda: time_receive(loop, BytesThenCopy, src, dst),
                }
                rates = best(recvs, args.repeat)
        finally:
            os.close(fd)
            loop.close()
        print()
        title = f"receive into an mmap, {loop_name}, best of {args.repeat}"
        print(table(title, rates, "bytes+copy", "loop CPU ms/GB"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
