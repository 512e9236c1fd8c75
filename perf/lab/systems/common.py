"""What every system runner gets, and the helpers they share.

A ``Setup`` is one lab ready for a run: the N client hosts, the origin host
(which serves the file over HTTP with nginx), the server hosts (the origin,
plus the supernode's own host when it has one: the hosts outside the N whose
upload capacity every system gets equally), the file and where to log.

Runners return an ``Outcome``: per client host the completion time in
seconds since the clients were started and the path of its copy, plus the
bytes the origin server itself sent (from nginx's access log or a seeder's
host counters), and notes for the report.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from perf.lab.netns import Host, LabError
from perf.lab.procs import Procs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
HTTP_PORT = 8080
READY_TIMEOUT = 30.0


@dataclass
class Setup:
    clients: list[Host]
    origin: Host
    servers: list[Host]          # origin first; the supernode host second if it has one
    sn_host: Host                # where the supernode runs (the origin or its own host)
    file_path: str
    file_size: int
    sha256: str
    work: str                    # a directory for this system's run
    procs: Procs
    timeout: float = 600.0
    options: dict = field(default_factory=dict)
    on_start: Callable[[], None] = lambda: None
    on_done: Callable[[], None] = lambda: None

    def start_clock(self) -> float:
        """Runners call this right before they start the clients: the run's t0."""
        self.on_start()
        return time.monotonic()

    def clients_done(self) -> None:
        """Runners call this once every client has finished, before they stop
        anything: what the harness measures over the run (CPU) ends here."""
        self.on_done()

    @property
    def file_name(self) -> str:
        return os.path.basename(self.file_path)

    def url(self, host: Host | None = None) -> str:
        return f"http://{(host or self.origin).ip}:{HTTP_PORT}/{self.file_name}"

    def client_dir(self, host: Host) -> str:
        path = os.path.join(self.work, host.name)
        os.makedirs(path, exist_ok=True)
        return path


@dataclass
class Outcome:
    times: dict[str, float]              # client host -> seconds to complete
    outputs: dict[str, str]              # client host -> path of its copy
    origin_bytes: int | None = None      # bytes the origin server sent
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def clean_env(**extra: str) -> dict:
    """The environment for lab processes: no proxies, the repo importable."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


def wait_port(procs: Procs, host: Host, port: int, timeout: float = READY_TIMEOUT,
              proc: subprocess.Popen | None = None) -> None:
    """Return once something accepts TCP on ``host.ip:port`` (checked inside the host)."""
    code = ("import socket,sys,time\n"
            f"d=time.monotonic()+{timeout}\n"
            "while time.monotonic()<d:\n"
            f"  try: socket.create_connection(('{host.ip}',{port}),timeout=1).close(); sys.exit(0)\n"
            "  except OSError: time.sleep(0.02)\n"
            "sys.exit(1)\n")
    waiter = procs.start(host, [sys.executable, "-c", code], log=f"wait-{host.name}.log")
    while waiter.poll() is None:
        if proc is not None and proc.poll() is not None:
            procs.stop(waiter, timeout=0.1)
            raise LabError(f"{proc.args[3:5]} exited {proc.returncode} before listening "
                           f"on {host.ip}:{port}")
        time.sleep(0.02)
    if waiter.returncode:
        raise LabError(f"nothing listens on {host.ip}:{port} after {timeout:.0f} s")


def wait_file(path: str, proc: subprocess.Popen, timeout: float = READY_TIMEOUT) -> None:
    """Return once ``path`` exists (a readiness file); fail if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise LabError(f"{proc.args[3:6]} exited {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise LabError(f"{proc.args[3:6]} not ready after {timeout:.0f} s")
        time.sleep(0.02)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()
