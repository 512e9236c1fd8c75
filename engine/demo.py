"""``make demo``: one origin, one supernode, four peer hosts, on loopback.

What it does, printing as it goes:

1. writes a file of ``--size`` random bytes (default 256 MiB) and serves it
   from an aiohttp origin on 127.0.0.1 that counts what it sends;
2. starts a supernode (``python -m supernode.cli``) and ``--hosts`` dfdaemons
   (each with its own port, data directory and one worker);
3. runs dfget on every host at once, checks every output's sha256, and
   reports per host the time and where the bytes came from (origin, CDN,
   other peers);
4. fetches the same file with the same number of plain HTTP clients
   (aiohttp, one process each) straight from the origin, for comparison;
5. tears everything down: every process it started is gone at the end.

On loopback the supernode's CDN is as fast as any peer, so the demo gives
the CDN only a few upload slots (``--cdn-slots``), as a seed with limited
bandwidth would have; the scheduler then spreads the load over the peers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import time

import orjson
from aiohttp import web

from engine.daemon.config import parse_size

MIB = 1 << 20
READY_TIMEOUT = 60.0
HTTP_CLIENT = """
import asyncio, sys, aiohttp
async def main(url, out):
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        r.raise_for_status()
        with open(out, "wb") as f:
            async for chunk in r.content.iter_chunked(1 << 20):
                f.write(chunk)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def say(text: str) -> None:
    print(text, flush=True)


class CountingOrigin:
    """An aiohttp origin serving one file with sendfile, counting requests and bytes."""

    def __init__(self, path: str) -> None:
        self.path, self.requests, self.bytes = path, 0, 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/file", self._serve)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file"

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        resp = web.FileResponse(self.path, chunk_size=1 << 20)
        await resp.prepare(request)
        self.bytes += resp.content_length or 0
        return resp

    def reset(self) -> None:
        self.requests = self.bytes = 0

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class Processes:
    """Every child process of the demo, each in its own process group."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def spawn(self, *argv: str, **kw) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(*argv, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its group
            await proc.wait()


async def start_supernode(procs: Processes, work: str, cdn_slots: int) -> str:
    log = open(os.path.join(work, "supernode.log"), "wb")
    proc = await procs.spawn(
        sys.executable, "-m", "supernode.cli", "--host", "127.0.0.1", "--port", "0",
        "--upload-port", "0", "--data-dir", os.path.join(work, "supernode"),
        "--cdn-upload-slots", str(cdn_slots), "--log-level", "warning",
        stdout=asyncio.subprocess.PIPE, stderr=log)
    log.close()
    line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT)
    if not line.startswith(b"supernode listening on "):
        raise RuntimeError(f"supernode did not start; see {work}/supernode.log")
    return line.split()[3].decode()


async def start_daemon(procs: Processes, data_dir: str, supernode: str) -> dict:
    os.makedirs(data_dir)
    r, w = os.pipe()
    with open(os.path.join(data_dir, "dfdaemon.log"), "wb") as log:
        await procs.spawn(
            sys.executable, "-m", "engine.cli.dfdaemon", "--data-dir", data_dir,
            "--listen-ip", "127.0.0.1", "--workers", "1", "--supernode", supernode,
            "--ready-fd", str(w), pass_fds=(w,), stdout=log, stderr=log)
    os.close(w)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb"))
    try:
        line = await asyncio.wait_for(reader.readline(), READY_TIMEOUT)
    finally:
        transport.close()
    if not line:
        raise RuntimeError(f"dfdaemon did not start; see {data_dir}/dfdaemon.log")
    return orjson.loads(line)


async def run_dfget(procs: Processes, data_dir: str, url: str, out: str,
                    progress: dict, name: str) -> dict:
    start = time.monotonic()
    proc = await procs.spawn(sys.executable, "-m", "engine.cli.dfget", "--data-dir", data_dir,
                             url, "-o", out, "--json", stdout=asyncio.subprocess.PIPE,
                             stderr=asyncio.subprocess.PIPE)
    last: dict = {}
    async for line in proc.stdout:
        last = orjson.loads(line)
        if last.get("event") == "progress" and last.get("length"):
            progress[name] = last["done_bytes"] / last["length"]
    err = await proc.stderr.read()
    if await proc.wait() != 0 or last.get("event") != "done":
        raise RuntimeError(f"dfget on {name} failed: {err.decode().strip()}")
    progress[name] = 1.0
    return {**last, "wall": time.monotonic() - start}


async def show_progress(progress: dict, start: float) -> None:
    while True:
        await asyncio.sleep(1.0)
        cells = "  ".join(f"{k} {v * 100:5.1f}%" for k, v in progress.items())
        say(f"  [{time.monotonic() - start:5.1f} s] {cells}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * MIB):
            h.update(chunk)
    return h.hexdigest()


def make_file(path: str, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 8 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


async def demo(size: int, hosts: int, cdn_slots: int, work: str) -> int:
    say(f"damselfly demo: {size / MIB:.0f} MiB to {hosts} hosts on loopback (work dir {work})")
    source = os.path.join(work, "origin-file")
    want = await asyncio.to_thread(make_file, source, size)
    say(f"- generated the file, sha256 {want[:16]}...")
    origin = CountingOrigin(source)
    procs = Processes()
    try:
        await origin.start()
        say(f"- origin serving {origin.url}")
        supernode = await start_supernode(procs, work, cdn_slots)
        say(f"- supernode at {supernode} (CDN upload slots: {cdn_slots})")
        daemons = await asyncio.gather(*(start_daemon(
            procs, os.path.join(work, f"host{i}"), supernode) for i in range(hosts)))
        for i, d in enumerate(daemons):
            say(f"- host{i}: dfdaemon pid {d['pid']}, upload port {d['upload_port']}")

        say(f"- dfget on all {hosts} hosts at once")
        progress = {f"host{i}": 0.0 for i in range(hosts)}
        start = time.monotonic()
        ticker = asyncio.create_task(show_progress(progress, start))
        try:
            results = await asyncio.gather(*(run_dfget(
                procs, os.path.join(work, f"host{i}"), origin.url,
                os.path.join(work, f"out-p2p-{i}"), progress, f"host{i}")
                for i in range(hosts)))
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
        p2p_wall = time.monotonic() - start
        p2p_origin = (origin.requests, origin.bytes)
        checks = await asyncio.gather(*(asyncio.to_thread(
            sha256_file, os.path.join(work, f"out-p2p-{i}")) for i in range(hosts)))
        for i in range(hosts):
            os.unlink(os.path.join(work, f"out-p2p-{i}"))

        say(f"- the same file with {hosts} plain HTTP clients (aiohttp) from the origin")
        origin.reset()
        start = time.monotonic()
        plain = await asyncio.gather(*(plain_get(procs, origin.url, os.path.join(
            work, f"out-http-{i}")) for i in range(hosts)))
        http_wall = time.monotonic() - start
        http_origin = (origin.requests, origin.bytes)
        http_checks = await asyncio.gather(*(asyncio.to_thread(
            sha256_file, os.path.join(work, f"out-http-{i}")) for i in range(hosts)))

        ok = all(c == want for c in checks + http_checks)
        print_table(size, results, checks, plain, http_checks, want)
        say(f"P2P:  {p2p_wall:6.2f} s wall; the origin served {p2p_origin[0]} request(s), "
            f"{p2p_origin[1] / MIB:.0f} MiB")
        say(f"HTTP: {http_wall:6.2f} s wall; the origin served {http_origin[0]} request(s), "
            f"{http_origin[1] / MIB:.0f} MiB")
        say("every output matches the origin's sha256" if ok else "SHA256 MISMATCH")
        return 0 if ok else 1
    finally:
        say("- tearing down")
        await procs.stop_all()
        await origin.stop()


async def plain_get(procs: Processes, url: str, out: str) -> float:
    start = time.monotonic()
    proc = await procs.spawn(sys.executable, "-c", HTTP_CLIENT, url, out)
    if await proc.wait() != 0:
        raise RuntimeError("a plain HTTP client failed")
    return time.monotonic() - start


def print_table(size: int, results: list[dict], checks: list[str], plain: list[float],
                http_checks: list[str], want: str) -> None:
    mib = size / MIB
    say("")
    say(f"{'host':<8}{'mode':<7}{'time s':>8}{'MiB/s':>9}{'origin MiB':>12}{'CDN MiB':>9}"
        f"{'peers MiB':>11}  sha256")
    for i, (r, check) in enumerate(zip(results, checks)):
        t = r["wall"]
        say(f"host{i:<4}{'p2p':<7}{t:8.2f}{mib / t:9.1f}{r['from_origin'] / MIB:12.1f}"
            f"{r['from_cdn'] / MIB:9.1f}{r['from_peers'] / MIB:11.1f}  "
            f"{'ok' if check == want else 'MISMATCH'}")
    for i, (t, check) in enumerate(zip(plain, http_checks)):
        say(f"host{i:<4}{'http':<7}{t:8.2f}{mib / t:9.1f}{mib:12.1f}{0:9.1f}{0:11.1f}  "
            f"{'ok' if check == want else 'MISMATCH'}")
    say("")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256M", help="file size, e.g. 64M, 1G (default 256M)")
    p.add_argument("--hosts", type=int, default=4, help="peer hosts (default 4)")
    p.add_argument("--cdn-slots", type=int, default=4,
                   help="CDN upload slots (default 4; see above)")
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="damselfly-demo-", dir="/tmp")
    try:
        import uvloop
        return uvloop.run(demo(parse_size(args.size), args.hosts, args.cdn_slots, work))
    except KeyboardInterrupt:
        return 130
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
