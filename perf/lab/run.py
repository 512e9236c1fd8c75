"""One point of the sweep: a fresh lab for N hosts, the probe, every system, the bound.

For each N the lab is built anew (origin host, optionally the supernode's own
host, N client hosts, an unshaped probe sink), the goodput of every host is
measured, and then each system runs in turn on the same lab, with the same
file, from a clean working directory (``repeat`` times, interleaved: the run
with the median median time stands for the system, see ``representative``).
Around each run the harness takes the same measurements for every system:

- completion time of each client, from the moment the clients start (servers
  and daemons are already up: readiness is not part of the time);
- bytes the server hosts sent, from the bridge's counters (the uniform
  measure), and what the origin server itself sent (nginx's log, or the
  seeder's host counters for BitTorrent);
- machine CPU while the clients ran (``cpu.CpuMonitor``), from the start
  of the clients to the runner's ``Setup.clients_done``;
- the sha256 of every client's copy.

Fairness. Outside the N clients every system gets the same upload capacity:
the server hosts. By default the supernode runs on the origin host (one
server host: nginx alone for central, nginx + supernode for damselfly, one
seeder for BitTorrent). With ``supernode_host="own"`` the supernode gets a
host of its own with the origin's bandwidth; then BitTorrent gets a second
seeder there and central a second nginx (clients split between them), and
the bound counts both (Us = the sum of their measured goodput).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

from perf.lab import probe
from perf.lab.bound import kumar_ross, which_term
from perf.lab.cpu import CpuMonitor
from perf.lab.netns import Lab
from perf.lab.procs import Procs
from perf.lab.systems.common import Setup, sha256_file

MIB = 1 << 20
SYSTEMS = ("nginx", "damselfly", "aria2")


@dataclass
class LabConfig:
    """Everything a sweep needs; the report stores it next to the results."""

    n_values: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 40])
    file_mib: float = 100
    origin_mbit: float = 200
    host_up_mbit: float = 100
    host_down_mbit: float = 100
    latency_ms: float = 0
    # Jumbo frames: the same bytes in fewer than half the packets, and the
    # lab pays for its emulated network in CPU, per packet (perf.lab.netns).
    # At N = 20 it took damselfly from 11.97 to 11.14 s and aria2 from 15.6
    # to 15.3 s, and the measured goodput (so the bound) from 95.7 to 99.3
    # Mbit/s.
    mtu: int = 9000
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    supernode_host: str = "origin"          # "origin" (shared) or "own"
    workers: int = 1                        # dfdaemon worker processes per host
    repeat: int = 1                         # runs of each system per N (the median run counts)
    timeout: float = 900.0                  # seconds per system run
    probe_seconds: float = 3.0
    seed: int = 1
    subnet: str = "10.77.0.0/24"
    bt_piece_kib: int = 1024
    keep_logs: str = ""                     # copy every run's logs under this directory

    @property
    def file_size(self) -> int:
        return int(self.file_mib * MIB) // 4096 * 4096

    def to_json(self) -> dict:
        return asdict(self)


def make_file(path: str, size: int, seed: int) -> str:
    """A reproducible incompressible file; returns its sha256."""
    rng = random.Random(seed)
    import hashlib

    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 8 * MIB))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def run_point(config: LabConfig, n: int, log=print) -> dict:
    """Build the lab for ``n`` clients, probe it, run every system; one result dict."""
    from perf.lab.systems import RUNNERS

    point: dict = {"n": n, "systems": {}}
    with Lab(config.subnet, mtu=config.mtu) as lab:
        lat = config.latency_ms
        origin = lab.add_host("origin", 1, up_mbit=config.origin_mbit,
                              down_mbit=config.origin_mbit, latency_ms=lat)
        servers, sn_host = [origin], origin
        if config.supernode_host == "own":
            sn_host = lab.add_host("sn", 2, up_mbit=config.origin_mbit,
                                   down_mbit=config.origin_mbit, latency_ms=lat)
            servers.append(sn_host)
        clients = [lab.add_host(f"h{i + 1}", 10 + i, up_mbit=config.host_up_mbit,
                                down_mbit=config.host_down_mbit, latency_ms=lat)
                   for i in range(n)]
        sink = lab.add_host("sink", 250)
        with Procs(os.path.join(lab.dir, "probe")) as procs:
            good = probe.measure(lab, procs, clients, servers, sink,
                                 seconds=config.probe_seconds + 1, warmup=1.0)
        point["lab"] = dict(lab.settings)
        point["goodput"] = good.to_json()
        point["bound"] = _bound(config, good, clients, servers)
        log(f"N={n}: goodput up median {_mbit(statistics.median(good.up[h.name] for h in clients))}"
            f", servers {'+'.join(_mbit(good.up[s.name]) for s in servers)} Mbit/s; "
            f"bound {point['bound']['t_s']:.2f} s ({point['bound']['term']})")
        file_path = os.path.join(lab.dir, "file.bin")
        digest = make_file(file_path, config.file_size, config.seed)
        setup = partial(Setup, clients, origin, servers, sn_host, file_path, config.file_size,
                        digest, timeout=config.timeout,
                        options={"workers": config.workers,
                                 "bt_piece_size": config.bt_piece_kib * 1024})
        runs: dict[str, list[dict]] = {system: [] for system in config.systems}
        for rep in range(config.repeat):   # interleaved: drift in the machine hits all alike
            for system in config.systems:
                tag = f"{system}-{rep + 1}"
                result = _run_system(RUNNERS[system], system, setup, os.path.join(lab.dir, tag),
                                     lab, config, keep_as=f"n{n}-{tag}")
                runs[system].append(result)
                log(f"N={n} {system}" + (f" run {rep + 1}/{config.repeat}"
                                          if config.repeat > 1 else "")
                    + f": median {result.get('median_s')} s, slowest "
                    f"{result.get('slowest_s')} s, ok {result['ok']}, cpu {result['cpu_mean']}"
                    + (f", error {result['error']}" if result.get("error") else ""))
        point["systems"] = {system: representative(rs) for system, rs in runs.items()}
    point["namespaces_left"] = [ns for ns in lab.namespaces()]
    return point


def _run_system(runner, system: str, make_setup: Callable[..., Setup], work: str, lab: Lab,
                config: LabConfig, keep_as: str) -> dict:
    """One run of one system on the lab, from the clean working directory ``work``."""
    os.makedirs(work)
    with Procs(os.path.join(work, "logs")) as procs:
        monitor = CpuMonitor()
        setup = make_setup(work, procs, on_start=monitor.__enter__, on_done=monitor.stop)
        clients, servers, digest = setup.clients, setup.servers, setup.sha256
        before = lab.sent_bytes()
        try:
            outcome = runner(setup)
            error = None
        except Exception as exc:          # one broken system must not end the sweep
            outcome, error = None, f"{type(exc).__name__}: {exc}"
        finally:
            monitor.stop()                # a runner that failed before clients_done
        procs.close()
        after = lab.sent_bytes()
    result = _summarise(system, outcome, error, monitor, before, after, clients,
                        servers, digest, config)
    _keep_logs(work, result)
    if config.keep_logs and os.path.isdir(os.path.join(work, "logs")):
        shutil.copytree(os.path.join(work, "logs"), os.path.join(config.keep_logs, keep_as),
                        dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


def representative(runs: list[dict]) -> dict:
    """The run that stands for a system at one N: the first failed run if any
    failed (a failure is never averaged away), else the run with the median
    median time (the lower middle of an even count). With more than one run
    it carries ``runs``: every run's median, slowest and CPU, in run order."""
    failed = [r for r in runs if not r["ok"]]
    if failed:
        chosen = failed[0]
    else:
        chosen = sorted(runs, key=lambda r: r["median_s"])[(len(runs) - 1) // 2]
    if len(runs) == 1:
        return chosen
    return {**chosen, "runs": [{"median_s": r.get("median_s"), "slowest_s": r.get("slowest_s"),
                                "cpu_mean": r.get("cpu_mean"), "ok": r["ok"]} for r in runs]}


def _bound(config: LabConfig, good: probe.Goodput, clients, servers) -> dict:
    us = sum(good.up[s.name] for s in servers)
    up = [good.up[h.name] for h in clients]
    down = [good.down[h.name] for h in clients]
    size = config.file_size
    return {"t_s": kumar_ross(size, us, up, down), "term": which_term(size, us, up, down),
            "server_up_bps": us, "up_bps_median": statistics.median(up),
            "down_bps_min": min(down), "down_bps_median": statistics.median(down),
            "t_nominal_s": kumar_ross(size, config.origin_mbit * 1e6 * len(servers),
                                      [config.host_up_mbit * 1e6] * len(clients),
                                      [config.host_down_mbit * 1e6] * len(clients))}


def _summarise(system, outcome, error, monitor, before, after, clients, servers, digest,
               config) -> dict:
    sent = {name: after[name] - before.get(name, 0) for name in after}
    result = {"system": system, "error": error, **monitor.summary(),
              "server_tx_bytes": sum(sent[s.name] for s in servers),
              "origin_host_tx_bytes": sent[servers[0].name],
              "client_tx_bytes": sum(sent[h.name] for h in clients)}
    if outcome is None:
        result.update(ok=False, times={}, median_s=None, slowest_s=None, origin_bytes=None)
        return result
    bad = dict(outcome.failures)
    for host in clients:
        path = outcome.outputs.get(host.name)
        if host.name in bad:
            continue
        if path is None or not os.path.exists(path):
            bad[host.name] = "no output file"
        elif sha256_file(path) != digest:
            bad[host.name] = "sha256 mismatch"
    times = sorted(outcome.times.values())
    origin_bytes = outcome.origin_bytes
    if origin_bytes is None:                 # BitTorrent: the seeder's host counters
        origin_bytes = sent[servers[0].name]
    result.update(
        ok=not bad and len(times) == len(clients), failures=bad, notes=outcome.notes,
        times={k: round(v, 3) for k, v in sorted(outcome.times.items())},
        median_s=round(statistics.median(times), 3) if times else None,
        slowest_s=round(times[-1], 3) if times else None,
        origin_bytes=origin_bytes,
        origin_bytes_per_file=round(origin_bytes / config.file_size, 4))
    return result


def _keep_logs(work: str, result: dict) -> None:
    """On a failure, keep the tail of each log in the result (the work dir goes away)."""
    if result["ok"]:
        return
    logs = {}
    log_dir = os.path.join(work, "logs")
    for name in sorted(os.listdir(log_dir)) if os.path.isdir(log_dir) else ():
        with open(os.path.join(log_dir, name), errors="replace") as f:
            tail = f.read()[-400:]
        if tail.strip():
            logs[name] = tail
    result["log_tails"] = dict(list(logs.items())[:12])


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:.1f}"
