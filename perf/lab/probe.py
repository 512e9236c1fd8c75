"""Goodput probe: what a plain TCP transfer really gets through each host's shaping.

The bound is computed from measured goodput (payload bytes per second a TCP
stream delivers), not from the tc rates: headers, ACKs and the shaper's own
accuracy cost a few percent, and the bound must not be optimistic by that.

One agent process runs in each host taking part (``python -m perf.lab.probe``
is the agent). It listens, prints ``ready``, waits for ``go`` on stdin, then
sends to its targets for ``seconds`` while counting what it receives per
source address; the rate is taken between ``warmup`` and ``seconds`` so slow
start does not count. The controller starts all agents, waits until every
one is ready, says ``go`` to all at once, and collects one JSON line each.

What ``measure`` runs: every host sends to the unshaped probe sink (its
upload), then the sink sends to every host (its download), in batches of
``GROUP`` hosts; then every server sends to the sink. Each stream thus
measures one host's link in one direction, whatever the other hosts' rates,
and no host sends and receives at once: a host doing both gets a few percent
less each way (its ACKs queue behind its data), and the bound must hold for a
one-way download too (the central baseline), so it takes the one-way figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

PORT = 5201
CHUNK = 1 << 20
# Streams run at once. The probe measures links, not the machine: with 40
# Python streams at 100 Mbit/s a 2-core machine runs out of CPU before the
# shapers bind (measured: 60-95 Mbit/s instead of 95), so big labs are
# probed in batches of this many streams, one batch after the other.
GROUP = 10


@dataclass
class Goodput:
    """Measured goodput in bits per second, per host name."""

    up: dict[str, float] = field(default_factory=dict)
    down: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"up_bps": self.up, "down_bps": self.down}


def measure(lab, procs, hosts: list, servers: list, sink, *, seconds: float = 3.0,
            warmup: float = 1.0) -> Goodput:
    """Measure every host's up and down and every server's up (see the module docstring)."""
    result = Goodput()
    for batch in range(0, len(hosts), GROUP):
        group = hosts[batch:batch + GROUP]
        for src, _, bps in _flows(procs, [(h, sink) for h in group], seconds, warmup):
            result.up[src.name] = bps
        for _, dst, bps in _flows(procs, [(sink, h) for h in group], seconds, warmup):
            result.down[dst.name] = bps
    for src, _, bps in _flows(procs, [(s, sink) for s in servers], seconds, warmup):
        result.up[src.name] = bps
    return result


def _flows(procs, flows, seconds, warmup):
    rates = run_flows(procs, flows, seconds=seconds, warmup=warmup)
    return [(src, dst, bps) for (src, dst), bps in rates.items()]


def run_flows(procs, flows: list, *, seconds: float, warmup: float) -> dict:
    """Run ``(src, dst)`` streams at once; bits per second delivered by each."""
    from perf.lab.netns import LabError

    targets: dict = defaultdict(list)
    for src, dst in flows:
        targets[src.name].append(dst)
    members = {h.name: h for flow in flows for h in flow}
    agents = {}
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo}
    for name, host in members.items():
        args = [sys.executable, "-m", "perf.lab.probe", "--bind", host.ip,
                "--seconds", str(seconds), "--warmup", str(warmup)]
        for dst in targets[name]:
            args += ["--to", dst.ip]
        agents[name] = procs.start(host, args, log=f"probe-{name}.log", env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        for name, proc in agents.items():
            if proc.stdout.readline().strip() != b"ready":
                raise LabError(f"probe agent in {name} did not get ready")
        for proc in agents.values():
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        received = {}
        for name, proc in agents.items():
            line = proc.stdout.readline()
            if proc.wait(timeout=seconds + 30) or not line:
                raise LabError(f"probe agent in {name} failed")
            received[name] = json.loads(line)["recv_bps"]
    finally:
        for proc in agents.values():
            procs.stop(proc, timeout=1.0)
    return {(src, dst): received[dst.name].get(src.ip, 0.0) for src, dst in flows}


# --- the agent -----------------------------------------------------------------

def agent(bind: str, to: list[str], seconds: float, warmup: float) -> dict:
    counts: dict[str, int] = defaultdict(int)
    lock = threading.Lock()
    stop = threading.Event()
    listener = socket.create_server((bind, PORT), backlog=64)
    listener.settimeout(0.2)

    def receive(conn: socket.socket, addr: str) -> None:
        buf = bytearray(CHUNK)
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    return
                with lock:
                    counts[addr] += n

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, (addr, _) = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=receive, args=(conn, addr), daemon=True).start()

    def send(dst: str, deadline: float) -> None:
        data = b"\0" * CHUNK
        with socket.create_connection((dst, PORT), timeout=10) as conn:
            conn.settimeout(None)
            while time.monotonic() < deadline:
                conn.sendall(data)

    threading.Thread(target=accept, daemon=True).start()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return {}
    start = time.monotonic()
    deadline = start + seconds
    for dst in to:
        threading.Thread(target=send, args=(dst, deadline), daemon=True).start()
    time.sleep(max(0.0, start + warmup - time.monotonic()))
    with lock:
        first, t1 = dict(counts), time.monotonic()
    time.sleep(max(0.0, deadline - time.monotonic()))
    with lock:
        last, t2 = dict(counts), time.monotonic()
    stop.set()
    return {"recv_bps": {a: (last[a] - first.get(a, 0)) * 8 / (t2 - t1) for a in last}}


def main() -> int:
    p = argparse.ArgumentParser(description="goodput probe agent (runs inside a lab host)")
    p.add_argument("--bind", required=True)
    p.add_argument("--to", action="append", default=[])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=1.0)
    a = p.parse_args()
    print(json.dumps(agent(a.bind, a.to, a.seconds, a.warmup)), flush=True)
    os._exit(0)                     # sender threads may still sit in sendall


if __name__ == "__main__":
    sys.exit(main())
