"""The swarm benchmark: damselfly vs nginx vs BitTorrent vs the bound, in a network lab.

For each N it builds a lab of network namespaces (``perf.lab``), measures
every host's goodput, runs every system on the same lab and file, and
computes the Kumar & Ross bound; then it runs the simulation (``perf.sim``)
for the same N and for large swarms, and writes JSON, markdown and a PNG
chart. Needs root (namespaces, tc); installs nginx, aria2, opentracker and
curl with apt-get if they are missing.

    sudo python3 perf/swarm.py                 # the default sweep (long: ~15 min)
    sudo python3 perf/swarm.py --quick         # N <= 4, 16 MiB, under 2 minutes
    sudo python3 perf/swarm.py --n 5 40 --systems damselfly nginx --sim-n

Results go to ``perf/results/latest.{json,md,png}`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from perf.lab import report, tools  # noqa: E402
from perf.lab.cpu import machine  # noqa: E402
from perf.lab.netns import MAX_MTU, MIN_MTU, LabError, cleanup_leftovers  # noqa: E402
from perf.lab.run import SYSTEMS, LabConfig, run_point  # noqa: E402
from perf.lab.systems import damselfly  # noqa: E402

QUICK = {"n_values": [1, 4], "file_mib": 16, "sim_n": [1, 4, 1000]}
# Every client writes the file to its disk once: curl and aria2 into their
# output (aria2 seeds from it), dfget into its cache, the output a hard link
# to it (dfget's default; `dfget --copy` would write it twice).
_ONE_WRITE = (" Each client writes the file once: curl and aria2 to their output, damselfly "
              "to its cache with the output hard-linked to it (dfget's default).")
FAIRNESS = {
    "origin": "Fairness: the supernode (scheduler + CDN) runs on the origin host, so every "
              "system has exactly one host outside the N clients, with the origin's upload: "
              "nginx alone (central), nginx + supernode (damselfly: the CDN's copy from nginx "
              "stays on that host), one aria2 seeder (BitTorrent). The bound's Us is that "
              "host's measured goodput." + _ONE_WRITE,
    "own": "Fairness: the supernode has a host of its own with the origin's bandwidth, so "
           "every system has two hosts outside the N clients: BitTorrent gets a second "
           "seeder there, central a second nginx (clients split between the two), and the "
           "bound's Us is the sum of both hosts' measured goodput." + _ONE_WRITE,
}


def parser() -> argparse.ArgumentParser:
    d = LabConfig()
    p = argparse.ArgumentParser(prog="perf/swarm.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="the quick profile: N in {1, 4}, 16 MiB (under 2 minutes)")
    p.add_argument("--n", type=int, nargs="+", default=None, help=f"default {d.n_values}")
    p.add_argument("--file-mib", type=float, default=None, help=f"default {d.file_mib}")
    p.add_argument("--origin-mbit", type=float, default=d.origin_mbit)
    p.add_argument("--host-mbit", type=float, default=None,
                   help="hosts' upload and download (default 100)")
    p.add_argument("--host-up-mbit", type=float, default=None)
    p.add_argument("--host-down-mbit", type=float, default=None)
    p.add_argument("--latency-ms", type=float, default=0,
                   help="one-way delay added on each host's egress (needs netem)")
    p.add_argument("--mtu", type=_int_in(MIN_MTU, MAX_MTU), default=d.mtu,
                   help=f"MTU of every lab link (default {d.mtu}: jumbo frames, see "
                        "perf/README.md)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--supernode-host", choices=("origin", "own"), default="origin")
    p.add_argument("--workers", type=int, default=d.workers, help="dfdaemon workers per host")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per system run")
    p.add_argument("--repeat", type=_int_in(1), default=d.repeat,
                   help="runs of each system per N, interleaved; the run with the median "
                        "median time is reported, every run's times are listed")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sim-n", type=int, nargs="*", default=None,
                   help="simulated swarm sizes beyond the lab's (default 1000 10000; "
                        "empty: none)")
    p.add_argument("--no-sim", action="store_true", help="skip the simulation entirely")
    p.add_argument("--out", default=os.path.join(REPO, "perf", "results"))
    p.add_argument("--stem", default="latest", help="file name stem of the results")
    p.add_argument("--keep-logs", default="", metavar="DIR",
                   help="copy every run's process logs under DIR")
    return p


def _int_in(low: int, high: int | None = None):
    """An argparse type: an int in [low, high] (no upper limit without ``high``)."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low or high is not None and value > high:
            limits = f"at least {low}" if high is None else f"{low}-{high}"
            raise argparse.ArgumentTypeError(f"must be {limits}, got {value}")
        return value
    parse.__name__ = "int"          # argparse names it in "invalid int value: ..."
    return parse


def config_from(args) -> LabConfig:
    cfg = LabConfig()
    if args.quick:
        cfg.n_values, cfg.file_mib = QUICK["n_values"], QUICK["file_mib"]
    if args.n:
        cfg.n_values = sorted(set(args.n))
    if args.file_mib:
        cfg.file_mib = args.file_mib
    host = args.host_mbit
    cfg.host_up_mbit = args.host_up_mbit or host or cfg.host_up_mbit
    cfg.host_down_mbit = args.host_down_mbit or host or cfg.host_down_mbit
    cfg.origin_mbit, cfg.latency_ms = args.origin_mbit, args.latency_ms
    cfg.mtu = args.mtu
    cfg.systems, cfg.supernode_host = list(args.systems), args.supernode_host
    cfg.workers, cfg.timeout, cfg.seed = args.workers, args.timeout, args.seed
    cfg.repeat = args.repeat
    cfg.keep_logs = args.keep_logs
    return cfg


def run_sweep(cfg: LabConfig, sim_n: list[int], log=print) -> dict:
    """Every N in the lab, then the simulation; the results dict of ``perf.lab.report``."""
    needed = {"ip", "tc"}
    for s in cfg.systems:
        needed.update(tools.SYSTEMS_TOOLS[s])
    tools.ensure(needed)
    cleanup_leftovers()
    results = {"generated": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "machine": machine(), "tools": tools.versions(),
        "config": cfg.to_json(), "fairness": FAIRNESS[cfg.supernode_host], "points": []}
    if "damselfly" in cfg.systems:
        results["damselfly_build"] = damselfly.prepare()
    t0 = time.monotonic()
    for n in cfg.n_values:
        results["points"].append(run_point(cfg, n, log=log))
    results["lab_wall_s"] = round(time.monotonic() - t0, 1)
    if sim_n is not None:
        results["sim"], results["sim_vs_lab"] = simulate(cfg, results["points"], sim_n, log)
    return results


def simulate(cfg: LabConfig, points: list[dict], extra: list[int], log) -> tuple[list, list]:
    """The simulation at the lab's N (with the lab's measured goodput) and at ``extra`` N."""
    from statistics import median

    from perf.sim.swarm import SimConfig, simulate as sim

    rows, versus = [], []
    for p in points:
        good, servers = p["goodput"], p["bound"]["server_up_bps"]
        ups = [v for k, v in good["up_bps"].items() if k.startswith("h")]
        downs = list(good["down_bps"].values())
        r = sim(SimConfig(n=p["n"], file_bytes=cfg.file_size, server_up_bps=servers,
                          up_bps=median(ups), down_bps=median(downs), seed=cfg.seed))
        r["source"] = "lab goodput"
        rows.append(r)
        lab = p["systems"].get("damselfly", {})
        lab_s = lab.get("median_s") if lab.get("ok") else None
        versus.append({"n": p["n"], "lab_s": lab_s, "sim_s": r["median_s"],
                       "ratio": r["median_s"] / lab_s if lab_s else None})
        log(f"sim N={p['n']}: median {r['median_s']:.2f} s (lab {lab_s}), "
            f"T/bound {r['ratio']:.3f}")
    for n in extra:
        r = sim(SimConfig(n=n, file_bytes=cfg.file_size, server_up_bps=cfg.origin_mbit * 1e6,
                          up_bps=cfg.host_up_mbit * 1e6, down_bps=cfg.host_down_mbit * 1e6,
                          seed=cfg.seed))
        r["source"] = "nominal rates"
        rows.append(r)
        log(f"sim N={n}: T {r['t_s']:.2f} s, bound {r['bound_s']:.2f} s, T/bound "
            f"{r['ratio']:.3f}, scheduler CPU {r['scheduler_cpu_s']:.1f} s "
            f"(wall {r['wall_s']:.0f} s)")
    return rows, versus


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    cfg = config_from(args)
    if args.no_sim:
        sim_n = None
    elif args.sim_n is not None:
        sim_n = args.sim_n
    else:
        sim_n = [1000] if args.quick else [1000, 10000]
    try:
        results = run_sweep(cfg, sim_n)
    except LabError as exc:
        print(f"perf/swarm.py: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("perf/swarm.py: interrupted; the lab was removed", file=sys.stderr)
        return 130
    paths = report.write(results, args.out, args.stem)
    print(report.markdown(results))
    print("wrote " + ", ".join(paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
