"""dfget's side of the local API: find the daemon, start one if needed, talk.

Blocking sockets, no event loop: dfget sends one request and reads events
until the daemon closes, which is what a blocking recv loop does best.

Starting a daemon. When nothing answers on the socket, dfget takes
``<data>/autostart.lock`` (a blocking flock: concurrent dfgets wait in line
here instead of each starting a daemon), tries the socket once more (the
one before us may have started it), and otherwise starts
``python -m engine.cli.dfdaemon --idle-exit ... --ready-fd N`` detached
(its own session, output to ``<data>/dfdaemon.log``). Readiness is the
JSON line the daemon writes to the pipe; a select with a deadline waits for
it, no sleeping loop. EOF without a line means the daemon died starting:
its exit status and log path go into the DaemonUnavailable message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import sys
import time
from collections.abc import Iterator

import orjson

from engine.errors import BrokenByPeer, DaemonUnavailable, from_oserror
from engine.localapi import LineDecoder, encode

START_TIMEOUT = 60.0


def connect(path: str) -> socket.socket | None:
    """A connected socket, or None when no daemon listens there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        return sock
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except OSError as exc:
        sock.close()
        raise DaemonUnavailable(f"cannot connect to dfdaemon at {path}: {exc.strerror}") from exc


def connect_or_start(data_dir: str, socket_path: str, daemon_args: list[str],
                     autostart: bool = True) -> socket.socket:
    sock = connect(socket_path)
    if sock is not None:
        return sock
    if not autostart:
        raise DaemonUnavailable(f"no dfdaemon listens on {socket_path} (autostart is off)")
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    with _flock(os.path.join(data_dir, "autostart.lock")):
        sock = connect(socket_path)
        if sock is not None:
            return sock
        start_daemon(data_dir, socket_path, daemon_args)
    sock = connect(socket_path)
    if sock is None:
        raise DaemonUnavailable(f"dfdaemon reported ready but {socket_path} refuses")
    return sock


def start_daemon(data_dir: str, socket_path: str, daemon_args: list[str],
                 timeout: float = START_TIMEOUT) -> dict:
    """Start a detached dfdaemon and wait for its ready line; return it."""
    import subprocess  # only when the daemon must be started: dfget starts faster without

    log_path = os.path.join(data_dir, "dfdaemon.log")
    r, w = os.pipe()
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli.dfdaemon", "--data-dir", data_dir,
                 "--socket", socket_path, "--ready-fd", str(w), *daemon_args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,),
                start_new_session=True, close_fds=True, cwd=data_dir)  # pins no user dir
    except OSError as exc:
        os.close(r)
        raise DaemonUnavailable(f"cannot start dfdaemon: {exc.strerror}") from exc
    finally:
        os.close(w)
    try:
        line = read_line(r, time.monotonic() + timeout)
    finally:
        os.close(r)
    if line:
        return orjson.loads(line)
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    raise DaemonUnavailable(f"dfdaemon did not start (exit status {code}); see {log_path}")


def read_line(fd: int, deadline: float) -> bytes:
    """Bytes up to the first newline, or b"" at EOF or the deadline."""
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return b""
        chunk = os.read(fd, 4096)
        if not chunk:
            return b""
        buf += chunk
    return buf.split(b"\n", 1)[0]


@contextlib.contextmanager
def _flock(path: str):
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise from_oserror(exc, f"opening {path}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def converse(sock: socket.socket, request: dict) -> Iterator[dict]:
    """Send ``request``; yield each event until the daemon closes the connection."""
    decoder = LineDecoder()
    with sock:
        try:
            sock.sendall(encode(request))
            while True:
                data = sock.recv(65536)
                if not data:
                    decoder.close()
                    return
                yield from decoder.feed(data)
        except OSError as exc:
            raise BrokenByPeer(f"dfdaemon connection broke: {exc.strerror or exc}") from exc
