"""Benchmark of the supernode scheduler through its real HTTP API.

``bench_http`` starts the real ``supernode`` command as a subprocess (so the
server has its own process and core, as in production), lets its CDN fetch
one file of ``pieces`` MiB from an in-process origin, then drives ``peers``
simulated peers through the API: each registers, then calls schedule round
after round, reporting the grants of its previous call as done (no bytes
move between peers: this measures the control plane) and asking for ``k``
more, until it is told ``done``. At most ``concurrency`` requests are in
flight at once. Each request is timed from send to parsed answer.

It is the HTTP counterpart of ``bench_scheduler.bench_core``; its rows say
what the API, JSON and HTTP add on top of the core's decision cost (the
server is supernode.apiserver; this client is aiohttp's).

    python perf/bench_scheduler_http.py                    # 200 and 1000 peers x 64 pieces
    python perf/bench_scheduler_http.py --peers 500 --pieces 32 --k 8 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from aiohttp import web  # noqa: E402

MiB = 1 << 20
_READY = re.compile(rb"supernode listening on (\S+) upload-port (\d+)\n")


async def _origin(size: int) -> tuple[web.AppRunner, str]:
    data = os.urandom(size)

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/file", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/file"


async def _start_supernode(data_dir: str) -> tuple[asyncio.subprocess.Process, str]:
    # This tree's supernode, not whatever an installed ``supernode`` script
    # or an editable install points at (after ``.ci/run``, a deleted clone).
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supernode.cli", "--port", "0", "--upload-port", "0",
        "--data-dir", data_dir,
        "--log-level", "warning", "--wait-ms", "5", "--pending-wait-ms", "20",
        "--heartbeat-timeout", "600", "--assignment-timeout", "600",
        stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO)
    m = _READY.fullmatch(await asyncio.wait_for(proc.stdout.readline(), 30))
    if not m:
        proc.kill()
        await proc.wait()
        raise RuntimeError("supernode did not start")
    return proc, m.group(1).decode()


class _Client:
    def __init__(self, session: aiohttp.ClientSession, api: str, concurrency: int) -> None:
        self.session, self.api = session, api
        self.gate = asyncio.Semaphore(concurrency)
        self.latencies: dict[str, list[int]] = {"register": [], "schedule": []}

    async def post(self, kind: str, body: dict) -> dict:
        async with self.gate:
            t = time.perf_counter_ns()
            async with self.session.post(f"{self.api}/api/v1/{kind}",
                                         data=orjson.dumps(body)) as resp:
                answer = orjson.loads(await resp.read())
                if resp.status != 200:
                    raise RuntimeError(f"{kind} answered {resp.status}: {answer}")
            self.latencies[kind].append(time.perf_counter_ns() - t)
        return answer


async def _peer(client: _Client, url: str, name: str, k: int, counts: dict) -> None:
    view = await client.post("register", {
        "url": url, "peer": {"peer_id": name, "ip": "127.0.0.1", "port": 9}})
    results: list[dict] = []
    while True:
        answer = await client.post("schedule", {"task_id": view["task_id"], "peer_id": name,
                                                "results": results, "want": k})
        results = [{"piece": a["piece"], "source": a["source"], "ok": True, "nbytes": a["size"]}
                   for a in answer["assignments"]]
        counts["grants"] += len(results)
        action = answer["action"]
        if action == "done":
            return
        if action == "wait":
            counts["waits"] += 1
            await asyncio.sleep(answer["wait_ms"] / 1000)  # the protocol's own pacing
        elif action != "assign":
            raise RuntimeError(f"peer {name} was told {action}: {answer['message']}")


async def bench_http(peers: int, pieces: int, k: int, concurrency: int = 64) -> dict:
    """Run one swarm to completion through the API of a real supernode process."""
    origin, url = await _origin(pieces * MiB)
    with tempfile.TemporaryDirectory(prefix="bench-supernode-") as data_dir:
        proc, api = await _start_supernode(data_dir)
        try:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as session:
                client = _Client(session, api, concurrency)
                # Warm the CDN so the measured part is scheduling, not the origin.
                await _peer(client, url, "warmup", pieces, {"grants": 0, "waits": 0})
                client.latencies = {"register": [], "schedule": []}
                counts = {"grants": 0, "waits": 0}
                names = [f"peer-{i}" for i in range(peers)]
                t0 = time.perf_counter()
                await asyncio.gather(*(_peer(client, url, n, k, counts) for n in names))
                wall = time.perf_counter() - t0
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
            await origin.cleanup()
    lat = sorted(client.latencies["schedule"])
    requests = len(lat) + len(client.latencies["register"])
    return {"peers": peers, "pieces": pieces, "k": k, "concurrency": concurrency,
            "requests": requests, "grants": counts["grants"], "waits": counts["waits"],
            "wall_s": wall, "req_per_s": requests / wall, "grants_per_s": counts["grants"] / wall,
            "p50_ms": lat[len(lat) // 2] / 1e6,
            "p99_ms": lat[min(len(lat) - 1, len(lat) * 99 // 100)] / 1e6,
            "max_ms": lat[-1] / 1e6, "exit_code": proc.returncode}


_COLUMNS = [("peers", "peers", "{:>6}"), ("pieces", "pieces", "{:>6}"), ("k", "k", "{:>3}"),
            ("concurrency", "conc", "{:>4}"), ("requests", "requests", "{:>8}"),
            ("grants", "grants", "{:>8}"), ("wall_s", "wall s", "{:>7.2f}"),
            ("req_per_s", "req/s", "{:>8,.0f}"), ("grants_per_s", "grants/s", "{:>9,.0f}"),
            ("p50_ms", "p50 ms", "{:>7.2f}"), ("p99_ms", "p99 ms", "{:>7.2f}"),
            ("max_ms", "max ms", "{:>7.2f}")]


def print_table(rows: list[dict]) -> None:
    print("  ".join(f"{head:>{len(fmt.format(rows[0][key]))}}" for key, head, fmt in _COLUMNS))
    for row in rows:
        print("  ".join(fmt.format(row[key]) for key, _, fmt in _COLUMNS))
    print("http: the real supernode process and API; p50/p99/max: one schedule request "
          "(send to parsed answer, client on the same host).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--pieces", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="pieces asked per schedule call")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="requests in flight at once")
    args = parser.parse_args(argv)
    rows = []
    for peers in args.peers:
        row = asyncio.run(bench_http(peers, args.pieces, args.k, args.concurrency))
        print(f"http, {peers} peers x {args.pieces} pieces: {row['waits']} waits, "
              f"supernode exit {row['exit_code']}", flush=True)
        rows.append(row)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
