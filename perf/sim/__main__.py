"""``python -m perf.sim``: T(N) / bound and scheduler CPU for swarms of N peers.

    python -m perf.sim                       # N = 10, 100, 1000, 10000; 100 MiB
    python -m perf.sim --n 40 --file-mib 16 --json
"""

from __future__ import annotations

import argparse
import json
import sys

from perf.sim.swarm import MIB, SimConfig, simulate


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf.sim", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[10, 100, 1000, 10000])
    p.add_argument("--file-mib", type=float, default=100)
    p.add_argument("--piece-mib", type=float, default=0,
                   help="piece size (default: what the engine chooses, 1 MiB up to 512 MiB)")
    p.add_argument("--origin-mbit", type=float, default=200, help="the CDN's upload")
    p.add_argument("--host-up-mbit", type=float, default=100)
    p.add_argument("--host-down-mbit", type=float, default=100)
    p.add_argument("--parallel", type=int, default=4, help="pieces in flight per peer")
    p.add_argument("--rpc-ms", type=float, default=2.0, help="one schedule call's round trip")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def config(args, n: int) -> SimConfig:
    return SimConfig(n=n, file_bytes=int(args.file_mib * MIB) // 4096 * 4096,
                     piece_bytes=int(args.piece_mib * MIB), server_up_bps=args.origin_mbit * 1e6,
                     up_bps=args.host_up_mbit * 1e6, down_bps=args.host_down_mbit * 1e6,
                     parallel=args.parallel, rpc_s=args.rpc_ms / 1000, seed=args.seed)


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.json:
        print(f"{'N':>6} {'pieces':>6} {'median s':>9} {'T(N) s':>8} {'bound s':>8} "
              f"{'T/bound':>8} {'sched CPU s':>11} {'wall s':>7}", flush=True)
    for n in args.n:
        r = simulate(config(args, n))
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{n:>6} {r['pieces']:>6} {r['median_s']:>9.2f} {r['t_s']:>8.2f} "
                  f"{r['bound_s']:>8.2f} {r['ratio']:>8.3f} {r['scheduler_cpu_s']:>11.2f} "
                  f"{r['wall_s']:>7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
