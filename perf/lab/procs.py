"""Processes inside lab hosts: started in their own session, always killed.

``Procs`` starts each command through ``ip netns exec`` (which execs the
command in place, so the pid is the command's) in a new session, and keeps
it. ``close`` sends SIGTERM to every process group still running, waits a
little, then SIGKILLs what is left; ``Lab.close`` afterwards kills anything
still inside the namespaces, so even a child that left its group dies.

``Finish`` timestamps: a thread per client process waits for it and notes
``time.monotonic()`` at exit, so completion times do not depend on the order
in which the runner looks at its clients.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence

from perf.lab.netns import Host, LabError


class Procs:
    """Every process a runner started; ``close`` ends them all."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.running: list[subprocess.Popen] = []
        os.makedirs(log_dir, exist_ok=True)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, host: Host, args: Sequence[str], *, log: str, env: dict | None = None,
              stdin: int | None = subprocess.DEVNULL, stdout: int | None = None,
              pass_fds: Sequence[int] = (), cwd: str | None = None) -> subprocess.Popen:
        path = os.path.join(self.log_dir, log)
        with open(path, "ab") as out:
            proc = subprocess.Popen(host.cmd(*args), stdin=stdin,
                                    stdout=out if stdout is None else stdout, stderr=out,
                                    env=env, start_new_session=True, pass_fds=tuple(pass_fds),
                                    cwd=cwd)
        proc.log_path = path  # type: ignore[attr-defined]
        self.running.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 10.0) -> int:
        """SIGTERM the process group, SIGKILL after ``timeout``; the exit status."""
        self.stop_all([proc], timeout)
        return proc.returncode

    def stop_all(self, procs: Iterable[subprocess.Popen], timeout: float = 10.0) -> None:
        """``stop`` for many at once: SIGTERM to every group, one shared
        ``timeout`` for all to exit, then SIGKILL to what is left."""
        procs = list(procs)
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        self.stop_all(self.running)
        for proc in self.running:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()
        self.running.clear()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Finish:
    """Exit times of client processes, noted by one waiting thread each."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.codes: dict[str, int] = {}
        self._threads: list[threading.Thread] = []

    def watch(self, name: str, proc: subprocess.Popen) -> None:
        def wait() -> None:
            code = proc.wait()
            self.times[name] = time.monotonic()
            self.codes[name] = code

        t = threading.Thread(target=wait, daemon=True)
        t.start()
        self._threads.append(t)

    def join(self, timeout: float) -> None:
        """Wait for every watched process; LabError past ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise LabError(f"clients still running after {timeout:.0f} s")


def read_log(proc: subprocess.Popen, limit: int = 3000) -> str:
    try:
        with open(proc.log_path, errors="replace") as f:  # type: ignore[attr-defined]
            return f.read()[-limit:]
    except OSError:
        return ""
