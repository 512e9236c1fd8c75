"""The sweep's report: JSON (everything), a markdown table, a PNG chart, judged targets.

Pure functions of the results dict that ``perf/swarm.py`` builds::

    {"generated", "machine", "tools", "config", "fairness", "damselfly_build",
     "points": [{"n", "bound": {"t_s", ...}, "goodput", "systems": {name: {...}}}],
     "sim": [{"n", "t_s", "bound_s", "ratio", "scheduler_cpu_s", ...}]}

so they are tested without a lab. The chart uses matplotlib's Agg backend
(no display needed): median completion time per system against N, the
slowest host as a dashed line of the same colour, and the bound in black.
"""

from __future__ import annotations

import json
import os

SYSTEM_LABELS = {"nginx": "central (nginx + curl)", "damselfly": "damselfly",
                 "aria2": "BitTorrent (aria2 + opentracker)"}
COLORS = {"nginx": "tab:red", "damselfly": "tab:blue", "aria2": "tab:green"}


def _t(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def _sys(point: dict, name: str) -> dict:
    return point.get("systems", {}).get(name) or {}


def _time(point: dict, name: str, key: str = "median_s"):
    s = _sys(point, name)
    return s.get(key) if s.get("ok") else None


def targets(results: dict) -> list[dict]:
    """The judged targets of issue 5, each with its figure and pass/fail (None: not measured)."""
    points = {p["n"]: p for p in results.get("points", [])}
    out = []

    def add(name, value, limit, ok):
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "limit": limit, "pass": None if value is None else ok(value)})

    big = max(points) if points else None
    p2p = "damselfly"
    if big is not None:
        pb = points[big]
        t_big, t_big_slow = _time(pb, p2p), _time(pb, p2p, "slowest_s")
        t5 = _time(points[5], p2p) if 5 in points else None
        add(f"T_p2p({big}) / T_p2p(5) (median)",
            t_big / t5 if t_big and t5 else None, "<= 1.10", lambda v: v <= 1.10)
        bound = pb.get("bound", {}).get("t_s")
        add(f"bound / T_p2p({big}), median host", bound / t_big if bound and t_big else None,
            ">= 0.90", lambda v: v >= 0.90)
        add(f"bound / T_p2p({big}), slowest host",
            bound / t_big_slow if bound and t_big_slow else None, ">= 0.80",
            lambda v: v >= 0.80)
        t_nginx = _time(pb, "nginx")
        add(f"T_nginx({big}) / T_p2p({big}) (median)",
            t_nginx / t_big if t_nginx and t_big else None, ">= 15", lambda v: v >= 15)
    for n in sorted(points):
        if n < 10:
            continue
        t, ta = _time(points[n], p2p), _time(points[n], "aria2")
        add(f"T_p2p({n}) / T_aria2({n}) (median)", t / ta if t and ta else None, "<= 0.80",
            lambda v: v <= 0.80)
    worst = None
    for n in sorted(points):
        s = _sys(points[n], p2p)
        if s.get("ok") and s.get("origin_bytes_per_file") is not None:
            worst = max(worst or 0.0, s["origin_bytes_per_file"])
    add("damselfly origin bytes / file size (worst N)", worst, "<= 1.02", lambda v: v <= 1.02)
    sims = [s for s in results.get("sim", []) if s.get("n", 0) >= 10_000]
    if sims:
        add(f"sim T / bound at N={sims[-1]['n']}", sims[-1]["ratio"], "<= 1.2",
            lambda v: v <= 1.2)
    return out


def _build(build: dict | None) -> str:
    if not build:
        return ""
    native = "native extension" if build.get("native") else "pure-Python fallback"
    return f" damselfly at {build.get('commit', '?')}, {native}."


def _lab_settings(results: dict) -> str:
    """The switch's bridge netfilter and the hosts' TCP congestion control, as the
    lab found them (results from before they were recorded have neither)."""
    lab = next((p["lab"] for p in results.get("points", []) if p.get("lab")), None)
    if lab is None:
        return ""
    nf = {"off": "off", "absent": "off (module not loaded)",
          "on": "ON (could not be turned off: iptables saw every bridged frame)"}.get(
              lab.get("bridge_netfilter"), "?")
    return (f" Bridge netfilter: {nf}; TCP congestion control: "
            f"{lab.get('tcp_congestion_control', '?')}.")


def markdown(results: dict) -> str:
    cfg = results.get("config", {})
    systems = [s for s in cfg.get("systems", SYSTEM_LABELS) if s in SYSTEM_LABELS]
    m = results.get("machine", {})
    lines = [
        f"Generated {results.get('generated', '?')} on {m.get('hostname', '?')}: "
        f"{m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}.{_build(results.get('damselfly_build'))}",
        "",
        f"File {cfg.get('file_mib')} MiB; origin {cfg.get('origin_mbit')} Mbit/s; hosts "
        f"{cfg.get('host_up_mbit')} up / {cfg.get('host_down_mbit')} down Mbit/s; latency "
        f"{cfg.get('latency_ms')} ms; MTU {cfg.get('mtu', 1500)}; supernode host: "
        f"{cfg.get('supernode_host')}.{_lab_settings(results)}",
        "",
        results.get("fairness", ""),
        "",
        "Completion time in seconds, median / slowest host. Origin: bytes the origin server "
        "sent, in file sizes. CPU: machine CPU while the clients ran (`!` = over 90 %: the "
        "machine, not the network, was the limit), and what that came to in CPU-seconds of "
        "all cores.",
        "",
    ]
    head = ["N", "bound s"]
    for s in systems:
        head += [f"{s} s", f"{s} origin", f"{s} CPU"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for p in results.get("points", []):
        row = [str(p["n"]), _t(p.get("bound", {}).get("t_s"))]
        for s in systems:
            r = _sys(p, s)
            if not r:
                row += ["—", "—", "—"]
                continue
            if r.get("ok"):
                row.append(f"{_t(r.get('median_s'))} / {_t(r.get('slowest_s'))}")
            else:
                row.append("FAILED")
            obf = r.get("origin_bytes_per_file")
            row.append("—" if obf is None else f"{obf:.2f}")
            row.append(_cpu_cell(r))
        lines.append("| " + " | ".join(row) + " |")
    repeats = [(p["n"], s, _sys(p, s)["runs"]) for p in results.get("points", [])
               for s in systems if _sys(p, s) and _sys(p, s).get("runs")]
    if repeats:
        lines += ["", f"Each system ran {len(repeats[0][2])} times per N, interleaved; the "
                  "table shows the run with the median median time. Every run's median "
                  "time (slowest host):", ""]
        for n, s, runs in repeats:
            times = ", ".join("failed" if not r.get("ok") else
                              f"{_t(r.get('median_s'))} ({_t(r.get('slowest_s'))})" for r in runs)
            lines.append(f"- N={n} {s}: {times}")
    failures = [(p["n"], s, _sys(p, s)) for p in results.get("points", []) for s in systems
                if _sys(p, s) and not _sys(p, s).get("ok")]
    for n, s, r in failures:
        detail = r.get("error") or "; ".join(f"{k}: {v}" for k, v in
                                             list(r.get("failures", {}).items())[:3])
        lines.append(f"\nN={n} {s} failed: {str(detail)[:300]}")
    if results.get("sim"):
        lines += ["", "Simulation (fluid model driving the real scheduler core; T(N) is the "
                  "slowest peer, when all N hold the file):", "",
                  "| N | pieces | median s | T(N) s | bound s | T(N) / bound | "
                  "scheduler CPU s | wall s | rates |", "|---|---|---|---|---|---|---|---|---|"]
        for s in results["sim"]:
            lines.append(f"| {s['n']} | {s['pieces']} | {_t(s['median_s'])} | {_t(s['t_s'])} | "
                         f"{_t(s['bound_s'])} | {s['ratio']:.3f} | "
                         f"{s['scheduler_cpu_s']:.2f} | {s['wall_s']:.1f} | "
                         f"{s.get('source', '')} |")
    if results.get("sim_vs_lab"):
        lines += ["", "Simulation vs lab (damselfly, median host):", "",
                  "| N | lab s | sim s | sim / lab |", "|---|---|---|---|"]
        for row in results["sim_vs_lab"]:
            ratio = "—" if row["ratio"] is None else f"{row['ratio']:.2f}"
            lines.append(f"| {row['n']} | {_t(row['lab_s'])} | {_t(row['sim_s'])} | {ratio} |")
    tg = targets(results)
    if tg:
        lines += ["", "Judged targets:", "", "| target | value | limit | result |",
                  "|---|---|---|---|"]
        for t in tg:
            verdict = {True: "pass", False: "FAIL", None: "not measured"}[t["pass"]]
            value = "—" if t["value"] is None else f"{t['value']}"
            lines.append(f"| {t['target']} | {value} | {t['limit']} | {verdict} |")
    return "\n".join(lines) + "\n"


def chart(results: dict, path: str) -> None:
    """Time vs N for every system (median solid, slowest dashed) and the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(results.get("points", []), key=lambda p: p["n"])
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    ns = [p["n"] for p in points]
    for s, label in SYSTEM_LABELS.items():
        med = [(p["n"], _time(p, s)) for p in points if _time(p, s) is not None]
        slow = [(p["n"], _time(p, s, "slowest_s")) for p in points
                if _time(p, s, "slowest_s") is not None]
        if med:
            ax.plot(*zip(*med), marker="o", color=COLORS[s], label=f"{label}, median host")
        if slow:
            ax.plot(*zip(*slow), linestyle="--", color=COLORS[s], alpha=0.7,
                    label=f"{label}, slowest host")
    bound = [(p["n"], p["bound"]["t_s"]) for p in points if p.get("bound")]
    if bound:
        ax.plot(*zip(*bound), color="black", linewidth=2, label="bound (Kumar & Ross)")
    sims = [(s["n"], s["median_s"]) for s in results.get("sim", [])
            if ns and s["n"] <= max(ns) and s.get("source") == "lab goodput"]
    if sims:
        ax.plot(*zip(*sims), linestyle=":", marker="x", color="tab:purple",
                label="damselfly, simulated (median)")
    cfg = results.get("config", {})
    ax.set_xlabel("hosts downloading at once (N)")
    ax.set_ylabel("completion time, s (log scale)")
    ax.set_yscale("log")
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    if ns:
        ax.set_xticks(ns)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_title(f"{cfg.get('file_mib')} MiB to N hosts: origin {cfg.get('origin_mbit')} Mbit/s, "
                 f"hosts {cfg.get('host_up_mbit')} Mbit/s", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(results: dict, out_dir: str, stem: str = "latest") -> dict[str, str]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png``; their paths."""
    os.makedirs(out_dir, exist_ok=True)
    results = {**results, "targets": targets(results)}
    paths = {ext: os.path.join(out_dir, f"{stem}.{ext}") for ext in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(paths["md"], "w") as f:
        f.write(markdown(results))
    chart(results, paths["png"])
    return paths


def _cpu_cell(r: dict) -> str:
    """``89 % ! (24.8 CPU-s)``; results from before cpu_seconds existed lack the bracket."""
    cpu = r.get("cpu_mean")
    if cpu is None:
        return "—"
    cell = f"{cpu * 100:.0f} %" + (" !" if r.get("cpu_bound") else "")
    if r.get("cpu_seconds") is not None:
        cell += f" ({r['cpu_seconds']:.1f} CPU-s)"
    return cell
