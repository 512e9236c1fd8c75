"""Benchmark of the supernode scheduler.

``bench_core`` drives the sans-IO core alone, in-process, with a fake clock:
one task, a CDN holding every piece (or gaining them round by round), N
peers that register and then, round after round, report the pieces granted
in the previous round and ask for ``k`` more, until every peer has the whole
file. Each schedule call is timed with ``perf_counter_ns``; the rate counts
all core work (results, schedule calls, ticks) against the grants made.

After the core, the same kind of swarm goes through the HTTP API of a real
``supernode`` process (``perf/bench_scheduler_http.py``, a local load
generator): schedule calls/s and latency as a peer sees them.

    python perf/bench_scheduler.py                 # 1k and 10k peers x 256 pieces, then HTTP
    python perf/bench_scheduler.py --peers 1000 --pieces 64 --k 8 --http-peers 0
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.types import PeerId, TaskId  # noqa: E402
from supernode.scheduler import ASSIGN, DONE, Scheduler, SchedulerConfig  # noqa: E402


class FakeClock:
    """Monotonic seconds that move only when the bench says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bench_core(peers: int, pieces: int, k: int, *, seed: int = 1, cdn_rate: int = 0,
               fail_rate: float = 0.0, round_seconds: float = 1.0, gc_on: bool = False,
               config: SchedulerConfig | None = None) -> dict:
    """Run one swarm to completion through the core; return the measurements.

    ``cdn_rate``: pieces landing at the CDN per round (0: all before start).
    ``fail_rate``: fraction of transfers reported as failed instead of done.
    ``gc_on``: leave Python's cyclic GC running (its pauses land in the p99).
    """
    rng = random.Random(seed)
    clock = FakeClock()
    cdn = PeerId("cdn")
    sched = Scheduler(config, clock=clock, rng=random.Random(seed), cdn=cdn)
    task = TaskId.of("bench", str(peers), str(pieces))
    ids = [PeerId(f"peer-{i}") for i in range(peers)]
    locations = [f"rack-{i % 8}" for i in range(peers)]

    t0 = time.perf_counter_ns()
    sched.task_known(task, pieces)
    landed = pieces if cdn_rate <= 0 else 0
    for piece in range(landed):
        sched.piece_available(task, piece)
    for peer, location in zip(ids, locations, strict=True):
        sched.register(task, peer, location=location)
    register_ns = time.perf_counter_ns() - t0

    pending: dict[PeerId, tuple] = {}       # grants made last round, per peer
    unfinished = list(ids)
    latencies: list[int] = []
    grants_total = waits = rounds = 0
    core_ns = 0
    gc.collect()
    if not gc_on:
        gc.disable()                        # measure the core, not the collector
    cpu0 = time.process_time()
    try:
        while unfinished:
            rounds += 1
            if rounds > 100_000:
                raise RuntimeError("the swarm did not finish")
            clock.now += round_seconds
            t = time.perf_counter_ns()
            if landed < pieces:
                for piece in range(landed, min(pieces, landed + cdn_rate)):
                    sched.piece_available(task, piece)
                landed = min(pieces, landed + cdn_rate)
            sched.tick()
            core_ns += time.perf_counter_ns() - t
            rng.shuffle(unfinished)
            still = []
            for peer in unfinished:
                t = time.perf_counter_ns()
                grants = pending.pop(peer, ())
                if grants:
                    if fail_rate:
                        ok = [g for g in grants if rng.random() >= fail_rate]
                        for g in grants:
                            if g not in ok:
                                sched.piece_failed(task, peer, g.piece, g.source, "failed")
                        grants = ok
                    sched.pieces_done(task, peer, grants)
                t1 = time.perf_counter_ns()
                decision = sched.schedule(task, peer, k)
                t2 = time.perf_counter_ns()
                latencies.append(t2 - t1)
                core_ns += t2 - t
                if decision.action == ASSIGN:
                    pending[peer] = decision.grants
                    grants_total += len(decision.grants)
                elif decision.action != DONE:
                    waits += 1
                if decision.action != DONE:
                    still.append(peer)
            unfinished = still
    finally:
        cpu_s = time.process_time() - cpu0
        gc.enable()
    latencies.sort()
    schedule_ns = sum(latencies)
    return {
        "peers": peers, "pieces": pieces, "k": k, "rounds": rounds,
        "decisions": len(latencies), "waits": waits, "assignments": grants_total,
        "register_s": register_ns / 1e9, "core_s": core_ns / 1e9, "cpu_s": cpu_s,
        "assign_per_cpu_s": grants_total / cpu_s,
        "assign_per_s": grants_total / (core_ns / 1e9),
        "schedule_assign_per_s": grants_total / (schedule_ns / 1e9),
        "p50_us": latencies[len(latencies) // 2] / 1e3,
        "p99_us": latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)] / 1e3,
        "max_us": latencies[-1] / 1e3,
    }


_COLUMNS = [("peers", "peers", "{:>7}"), ("pieces", "pieces", "{:>6}"), ("k", "k", "{:>3}"),
            ("rounds", "rounds", "{:>6}"), ("decisions", "decisions", "{:>9}"),
            ("assignments", "grants", "{:>9}"), ("core_s", "core s", "{:>7.2f}"),
            ("assign_per_s", "grants/s", "{:>9,.0f}"),
            ("schedule_assign_per_s", "grants/s*", "{:>9,.0f}"),
            ("assign_per_cpu_s", "grants/cpu-s", "{:>12,.0f}"),
            ("p50_us", "p50 us", "{:>7.1f}"), ("p99_us", "p99 us", "{:>7.1f}"),
            ("max_us", "max us", "{:>8.1f}")]


def print_table(rows: list[dict]) -> None:
    heads = [f"{head:>{len(fmt.format(rows[0][key])) if rows else len(head)}}"
             for key, head, fmt in _COLUMNS]
    print("  ".join(heads))
    for row in rows:
        print("  ".join(fmt.format(row[key]) for key, _, fmt in _COLUMNS))
    print("grants/s: grants per wall second of all core work (results + schedule + tick);\n"
          "grants/s*: per wall second of schedule calls only; grants/cpu-s: per CPU second\n"
          "of the whole loop, bench overhead included (robust on a busy machine);\n"
          "p50/p99/max: wall time of one schedule call (one peer asking for k pieces).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--pieces", type=int, default=256)
    parser.add_argument("--k", type=int, default=4, help="pieces asked per schedule call")
    parser.add_argument("--cdn-rate", type=int, default=0,
                        help="pieces landing at the CDN per round (0: all at start)")
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gc", action="store_true", help="leave the cyclic GC running")
    parser.add_argument("--http-peers", type=int, nargs="+", default=[200, 1000],
                        help="swarm sizes for the HTTP part (0 skips it)")
    parser.add_argument("--http-pieces", type=int, default=64)
    args = parser.parse_args(argv)
    rows = []
    for peers in args.peers:
        row = bench_core(peers, args.pieces, args.k, seed=args.seed, cdn_rate=args.cdn_rate,
                         fail_rate=args.fail_rate, gc_on=args.gc)
        print(f"core, {peers} peers x {args.pieces} pieces: registered in "
              f"{row['register_s']:.2f} s, {row['waits']} waits", flush=True)
        rows.append(row)
    print_table(rows)
    http_peers = [n for n in args.http_peers if n > 0]
    if http_peers:
        import asyncio

        import bench_scheduler_http as http

        http_rows = [asyncio.run(http.bench_http(n, args.http_pieces, args.k))
                     for n in http_peers]
        print()
        http.print_table(http_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
