"""A loopback swarm for integration tests: origin, supernode, dfdaemons, dfget.

``Services`` runs the test origin (tests.integration.origin) and a supernode
(SupernodeServer) on a uvloop in a background thread, so they outlive any
one test's event loop and a module fixture can share them. ``Daemon`` is a
real ``dfdaemon`` process (its own session and process group, so cleanup can
kill the whole group); readiness is the JSON line it writes to a pipe
(``--ready-fd``), read with a deadline, never a sleep. ``dfget`` runs the
real CLI as a subprocess.

What must stay true: every process a test starts is killed by the fixture
that started it, whatever the test did (``Daemon.close`` ends with SIGKILL
to the process group).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import orjson

from engine.cli.daemonclient import connect, converse, read_line
from tests.helpers import REPO
from tests.integration.origin import Origin

READY_TIMEOUT = 60.0


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def scratch_dir(prefix: str):
    """A temp dir short enough for unix socket paths (108 bytes), removed on exit."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Services:
    """Origin + supernode on a background event loop."""

    def __init__(self, data_dir: str, with_supernode: bool = True, **supernode_options) -> None:
        self.data_dir, self.with_supernode = data_dir, with_supernode
        self.supernode_options = supernode_options
        self.origin: Origin | None = None
        self.supernode_url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def __enter__(self) -> Services:
        started: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(started,), daemon=True)
        self._thread.start()
        started.result(timeout=READY_TIMEOUT)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)

    def add(self, name: str, data: bytes, **behaviour) -> str:
        # Origin.add only stores into a dict; safe from this thread.
        self.origin.add(name, data, **behaviour)
        return self.origin.url(name)

    def _main(self, started: concurrent.futures.Future) -> None:
        import uvloop

        try:
            uvloop.run(self._serve(started))
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)

    async def _serve(self, started: concurrent.futures.Future) -> None:
        from supernode.config import SupernodeConfig
        from supernode.server import SupernodeServer

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            self.origin = await stack.enter_async_context(Origin())
            if self.with_supernode:
                node = await stack.enter_async_context(SupernodeServer(SupernodeConfig(
                    port=0, upload_port=0, data_dir=os.path.join(self.data_dir, "supernode"),
                    log_level="warning", **self.supernode_options)))
                self.supernode_url = node.url
            started.set_result(None)
            await self._stop.wait()


class Daemon:
    """One real dfdaemon process group."""

    def __init__(self, data_dir: str, supernodes: list[str], *args: str) -> None:
        self.data_dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.log_path = os.path.join(data_dir, "test-dfdaemon.log")
        r, w = os.pipe()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli.dfdaemon", "--data-dir", data_dir,
                 "--listen-ip", "127.0.0.1", "--supernode", ",".join(supernodes),
                 "--ready-fd", str(w), "--log-level", "info", *args],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(w,),
                start_new_session=True)
        os.close(w)
        try:
            line = read_line(r, time.monotonic() + READY_TIMEOUT)
        finally:
            os.close(r)
        if not line:
            self.close()
            raise RuntimeError(f"dfdaemon did not get ready; log:\n{self.log()}")
        self.ready = orjson.loads(line)
        self.socket = self.ready["socket"]
        self.port = self.ready["upload_port"]

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-5000:]

    def stats(self) -> dict:
        sock = connect(self.socket)
        assert sock is not None, "the daemon's socket refuses"
        (event,) = list(converse(sock, {"op": "stats"}))
        return event

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        self.proc.wait()


def dfget_cmd(data_dir: str, url: str, output: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli.dfget", "--data-dir", data_dir, url,
            "-o", output, *args]


def dfget(data_dir: str, url: str, output: str, *args: str, timeout: float = 120.0,
          cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(dfget_cmd(data_dir, url, output, *args), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": REPO})


def dfget_many(jobs: list[tuple[str, str, str]], *args: str, timeout: float = 300.0
               ) -> list[subprocess.CompletedProcess]:
    """Run several dfgets at once: ``jobs`` is (data dir, url, output) each."""
    procs = [subprocess.Popen(dfget_cmd(d, u, o, *args), cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d, u, o in jobs]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Block until ``pid`` exits (pidfd: a readiness signal, not polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)
