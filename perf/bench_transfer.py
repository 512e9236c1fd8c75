"""Loopback transfer benchmark: dfget from one seeded peer vs curl from nginx.

    python perf/bench_transfer.py [--size-gib 2] [--rounds 3] [--rss-large-gib 4]
                                  [--rss-small-mib 256]

What it measures, all on 127.0.0.1:

1. throughput: one dfget pulling a ``--size-gib`` file on host B from host A,
   which already holds it (seeded through the CDN first), against curl
   pulling the same file from nginx (sendfile on). Wall seconds, MiB/s and
   CPU seconds per GiB (dfdaemon B's processes + dfget; nginx + curl), for
   ``--rounds`` interleaved runs of each (a fresh host B every round), then
   their medians: one run of either tool varies by +-20 % on the VM. dfget's
   default output is a hard link to the cache (one write of every byte); a
   ``dfget --copy`` row shows the same download with an output of its own,
   written while the pieces arrive: every byte written twice (cache and
   output, both O_DIRECT), which on one virtual disk shared by both peers
   costs wall time curl never pays (its bytes are still dirty in the page
   cache when it exits, while dfget's output is synced);
2. memory: the peak RSS of a fresh dfdaemon (coordinator + workers, summed,
   sampled every 20 ms by a thread) while it downloads a ``--rss-small-mib``
   file and a ``--rss-large-gib`` file: the ratio shows whether memory grows
   with the file (it should not: pieces land in an mmap and are released).

Each timed transfer starts right after a scratch file of the same size was
written and deleted (``settle_memory``), so that neither tool writes into
memory the VM has handed back to its hypervisor while the other gets
freshly freed pages.

nginx is the origin for the P2P runs too (the supernode's CDN fetches from
it). The supernode gets one CDN upload slot, so host B's pieces come mostly
from host A; the table shows the split. nginx is installed with apt-get when
missing (needs root). Every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import orjson
import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB, GIB = 1 << 20, 1 << 30
TOOLS = ["dfget", "dfget --copy", "curl"]
NGINX_CONF = """
daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  server {{ listen 127.0.0.1:{port}; root {root}; }} }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_file(path: str, size: int) -> None:
    """Fast non-repeating bytes: one random 16 MiB block, each copy stamped with its index."""
    block = bytearray(os.urandom(16 * MIB))
    with open(path, "wb") as f:
        written = i = 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")
            n = min(len(block), size - written)
            f.write(block[:n])
            written, i = written + n, i + 1


def read_line(fd: int, timeout: float) -> bytes:
    deadline, buf = time.monotonic() + timeout, b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeError("a server did not get ready in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError("a server exited before it was ready")
        buf += chunk
    return buf.split(b"\n", 1)[0]


class Stack:
    """Processes started by the bench, each in its own group; stopped in reverse."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], log: str, **kw) -> subprocess.Popen:
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                    stdout=kw.pop("stdout", out), stderr=out,
                                    start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)


def start_nginx(stack: Stack, work: str, root: str) -> str:
    if shutil.which("nginx") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=True,
                       stdout=subprocess.DEVNULL)
    port = free_port()
    os.makedirs(os.path.join(work, "tmp"), exist_ok=True)
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(work=work, port=port, root=root))
    proc = stack.start(["nginx", "-c", conf, "-p", work], os.path.join(work, "nginx.log"))
    deadline = time.monotonic() + 30
    while True:  # nginx has no readiness signal: a bounded wait for its port
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start; see {work}/nginx.err")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def start_supernode(stack: Stack, work: str) -> str:
    proc = stack.start([sys.executable, "-m", "supernode.cli", "--host", "127.0.0.1",
                        "--port", "0", "--upload-port", "0", "--cdn-upload-slots", "1",
                        "--data-dir", os.path.join(work, "supernode"), "--log-level",
                        "warning"], os.path.join(work, "supernode.log"), stdout=subprocess.PIPE)
    line = read_line(proc.stdout.fileno(), 60)
    return line.split()[3].decode()


def start_daemon(stack: Stack, work: str, name: str, supernode: str) -> tuple[str, int]:
    data = os.path.join(work, name)
    os.makedirs(data)
    r, w = os.pipe()
    proc = stack.start([sys.executable, "-m", "engine.cli.dfdaemon", "--data-dir", data,
                        "--listen-ip", "127.0.0.1", "--supernode", supernode,
                        "--ready-fd", str(w)], os.path.join(work, f"{name}.log"), pass_fds=(w,))
    os.close(w)
    try:
        read_line(r, 60)
    finally:
        os.close(r)
    return data, proc.pid


def settle_memory(work: str, size: int) -> None:
    """Write ``size`` bytes to a scratch file and delete it, just before a timed
    transfer, so that every transfer starts with the same amount of freshly
    freed page cache.

    On the 2-core VM, memory the guest has not used for a while is handed
    back to the hypervisor and is slow to write into again: whichever tool
    ran right after a large file was deleted wrote into warm pages and looked
    2-3x faster (curl took 2.2 s after dfget's copied-out output was deleted,
    6-7 s when dfget had written its output with O_DIRECT and freed nothing).
    """
    path = os.path.join(work, "settle")
    block = memoryview(bytearray(os.urandom(1 << 16)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for offset in range(0, size, len(block)):
            os.pwrite(fd, block, offset)
    finally:
        os.close(fd)
        os.unlink(path)


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class RssSampler(threading.Thread):
    """Peak summed RSS of a process tree, sampled until stopped."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.every):
            rss = 0
            for p in tree(self.pid):
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak = max(self.peak, rss)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def dfget(data: str, url: str, out: str, *flags: str) -> tuple[float, float, dict]:
    """(wall seconds, dfget's own CPU seconds, done event)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "engine.cli.dfget", "--data-dir", data, url,
                        "-o", out, "--json", *flags], cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"dfget failed: {r.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, orjson.loads(r.stdout.splitlines()[-1])


def curl(url: str, out: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    subprocess.run(["curl", "-sf", "-o", out, url], check=True)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench(args, work: str) -> None:
    files = os.path.join(work, "files")
    os.makedirs(files)
    os.chmod(work, 0o755)  # nginx workers run as nobody when started by root
    size, small, large = (int(args.size_gib * GIB), int(args.rss_small_mib * MIB),
                          int(args.rss_large_gib * GIB))
    for name, n in (("big", size), ("small", small), ("large", large)):
        print(f"generating {name}: {n / MIB:.0f} MiB", flush=True)
        make_file(os.path.join(files, name), n)
    stack = Stack()
    try:
        origin = start_nginx(stack, work, files)
        nginx_master = stack.procs[-1].pid
        supernode = start_supernode(stack, work)
        seed, _ = start_daemon(stack, work, "seed", supernode)
        print("seeding host A (through the CDN)", flush=True)
        dfget(seed, f"{origin}/big", os.path.join(work, "out-seed"))
        os.unlink(os.path.join(work, "out-seed"))
        nginx_procs = tree(nginx_master)
        rounds = []
        for r in range(args.rounds):
            # A fresh host B for each dfget (its cache would answer the second
            # one with no network); the order rotates so that no tool always
            # runs on the memory another just freed.
            got = {}
            for tool in TOOLS[r % 3:] + TOOLS[:r % 3]:
                print(f"round {r + 1}/{args.rounds}: {tool}", flush=True)
                if tool != "curl":
                    host, host_pid = start_daemon(stack, work, f"host{r}{tool[-4:]}", supernode)
                settle_memory(work, size)
                if tool != "curl":
                    cpu0 = cpu_seconds(tree(host_pid))
                    flags = ("--copy",) if tool.endswith("--copy") else ()
                    wall, own_cpu, done = dfget(host, f"{origin}/big",
                                                os.path.join(work, "out-p2p"), *flags)
                    got[tool] = (wall, own_cpu + cpu_seconds(tree(host_pid)) - cpu0, done)
                    os.unlink(os.path.join(work, "out-p2p"))
                    stack.stop(stack.procs[-1])
                    shutil.rmtree(host, ignore_errors=True)
                else:
                    cpu0 = cpu_seconds(nginx_procs)
                    c_wall, c_cpu = curl(f"{origin}/big", os.path.join(work, "out-curl"))
                    got[tool] = (c_wall, c_cpu + cpu_seconds(nginx_procs) - cpu0, None)
                    os.unlink(os.path.join(work, "out-curl"))
            rounds.append(got)

        peaks = {}
        for name, n in (("small", small), ("large", large)):
            print(f"peak RSS while downloading {name} ({n / MIB:.0f} MiB)", flush=True)
            data, pid = start_daemon(stack, work, f"rss-{name}", supernode)
            sampler = RssSampler(pid)
            sampler.start()
            dfget(data, f"{origin}/{name}", os.path.join(work, f"out-{name}"))
            peaks[name] = sampler.stop()
            os.unlink(os.path.join(work, f"out-{name}"))
            stack.stop(stack.procs[-1])
            shutil.rmtree(data, ignore_errors=True)
    finally:
        stack.close()

    gib = size / GIB
    print()
    print(f"transfer of {gib:.2f} GiB on loopback   seconds    MiB/s   CPU s/GiB")
    for r, got in enumerate(rounds):
        for tool in TOOLS:
            wall, cpu, _ = got[tool]
            print(f"  round {r + 1}: {tool:<22}{wall:9.2f} {size / MIB / wall:8.0f} "
                  f"{cpu / gib:11.2f}")
    med = {tool: (statistics.median(g[tool][0] for g in rounds),
                  statistics.median(g[tool][1] for g in rounds)) for tool in TOOLS}
    c_wall, c_cpu = med["curl"]
    for tool, label in (("dfget", "dfget from a seeded peer"), ("dfget --copy", "dfget --copy"),
                        ("curl", "curl from nginx")):
        w, c = med[tool]
        print(f"  median: {label:<23}{w:9.2f} {size / MIB / w:8.0f} {c / gib:11.2f}")
    for tool in ("dfget", "dfget --copy"):
        w, c = med[tool]
        print(f"  ratio {tool + ' / curl':<25}{w / c_wall:9.2f} {c_wall / w:8.2f} "
              f"{c / max(c_cpu, 1e-9):11.2f}")
    done = rounds[-1]["dfget"][2]
    print(f"  dfget's bytes (last round): {done['from_peers'] / MIB:.0f} MiB from peer A, "
          f"{done['from_cdn'] / MIB:.0f} MiB from the CDN, "
          f"{done['from_origin'] / MIB:.0f} MiB from the origin; "
          f"{done['seconds']:.2f} s inside the daemon (download + export)")
    print()
    print("peak RSS of dfdaemon (coordinator + workers)")
    print(f"  downloading {small / MIB:6.0f} MiB   {peaks['small'] / MIB:8.1f} MiB")
    print(f"  downloading {large / MIB:6.0f} MiB   {peaks['large'] / MIB:8.1f} MiB")
    print(f"  ratio large / small         {peaks['large'] / max(peaks['small'], 1):8.2f} "
          f"(file size ratio {large / max(small, 1):.0f})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-gib", type=float, default=2.0, help="throughput file size")
    p.add_argument("--rounds", type=int, default=3,
                   help="dfget and curl runs, interleaved; the table gives their medians")
    p.add_argument("--rss-small-mib", type=float, default=256.0)
    p.add_argument("--rss-large-gib", type=float, default=4.0)
    p.add_argument("--workdir", default=None, help="where files go (default: a temp dir)")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="damselfly-bench-", dir=args.workdir or "/tmp")
    try:
        bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
