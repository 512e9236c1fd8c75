"""The BitTorrent baseline: opentracker and aria2c, both from Debian.

The tracker runs on the origin host, bound to its lab address. One seeder
runs on each server host (the origin, and the supernode's own host when it
has one), so the swarm gets the same capacity outside the N as damselfly.
Every client runs a leecher that keeps seeding after it completes (as a
dfdaemon keeps serving), until all clients are done.

Completion: aria2c runs ``--on-bt-download-complete`` when the download is
complete and before seeding; the hook writes the wall-clock time to a file.
Bytes the origin sent: the seeder is alone on the origin host, so its bytes
are the host's counters (taken by the harness), not reported here.

Options beyond the defaults are the lab's (no DHT or local peer discovery,
which could only find peers of this same swarm anyway; a short tracker
interval so late joiners are learned about quickly; no preallocation) and
what seeding forever needs.
"""

from __future__ import annotations

import os
import time

from perf.lab.netns import LabError
from perf.lab.procs import read_log
from perf.lab.systems.common import Outcome, Setup, clean_env, wait_port
from perf.lab.torrent import make_torrent

TRACKER_PORT = 6969
BT_PORT = 6881


def _aria2(host, directory: str, torrent: str, *extra: str) -> list[str]:
    return ["aria2c", f"--dir={directory}", f"--interface={host.ip}",
            f"--listen-port={BT_PORT}", "--enable-dht=false", "--enable-dht6=false",
            "--bt-enable-lpd=false", "--seed-ratio=0.0", "--bt-tracker-interval=5",
            "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
            "--check-certificate=false", "--summary-interval=0", "--console-log-level=warn",
            "--enable-color=false", *extra, torrent]


def run_bittorrent(setup: Setup) -> Outcome:
    procs, origin = setup.procs, setup.origin
    env = clean_env()
    piece = setup.options.get("bt_piece_size", 1 << 20)
    announce = f"http://{origin.ip}:{TRACKER_PORT}/announce"
    meta, info_hash = make_torrent(setup.file_path, announce, piece)
    torrent = os.path.join(setup.work, "file.torrent")
    with open(torrent, "wb") as f:
        f.write(meta)
    # Debian builds opentracker with a whitelist: it tracks only the info
    # hashes listed in the file. It chroots into ``jail`` and reads the list
    # from there, so the path is relative and the process starts in the jail.
    jail = os.path.join(setup.work, "tracker")
    os.makedirs(jail, exist_ok=True)
    with open(os.path.join(jail, "whitelist"), "w") as f:
        f.write(info_hash + "\n")
    tracker = procs.start(origin, ["opentracker", "-i", origin.ip, "-p", str(TRACKER_PORT),
                                   "-P", str(TRACKER_PORT), "-d", jail, "-u", "nobody",
                                   "-w", "whitelist"], log="opentracker.log", cwd=jail)
    wait_port(procs, origin, TRACKER_PORT, proc=tracker)
    for host in setup.servers:
        seed_dir = os.path.join(setup.work, f"seed-{host.name}")
        os.makedirs(seed_dir, exist_ok=True)
        os.link(setup.file_path, os.path.join(seed_dir, setup.file_name))
        seeder = procs.start(host, _aria2(host, seed_dir, torrent, "--bt-seed-unverified=true",
                                          "--check-integrity=false"),
                             log=f"aria2-seed-{host.name}.log", env=env)
        wait_port(procs, host, BT_PORT, proc=seeder)
    leechers, outputs, marks = {}, {}, {}
    t0 = setup.start_clock()
    wall0 = time.time()
    for host in setup.clients:
        d = setup.client_dir(host)
        hook = os.path.join(d, "done.sh")
        marks[host.name] = hook + ".at"
        with open(hook, "w") as f:
            f.write(f"#!/bin/sh\ndate +%s.%N > {marks[host.name]}.tmp && "
                    f"mv {marks[host.name]}.tmp {marks[host.name]}\n")
        os.chmod(hook, 0o755)
        outputs[host.name] = os.path.join(d, setup.file_name)
        leechers[host.name] = procs.start(
            host, _aria2(host, d, torrent, f"--on-bt-download-complete={hook}"),
            log=f"aria2-{host.name}.log", env=env)
    outcome = Outcome({}, outputs)
    deadline = t0 + setup.timeout
    while len(outcome.times) + len(outcome.failures) < len(setup.clients):
        for name, mark in marks.items():
            if name in outcome.times or name in outcome.failures:
                continue
            if os.path.exists(mark):
                with open(mark) as f:
                    outcome.times[name] = float(f.read()) - wall0
            elif leechers[name].poll() is not None:
                outcome.failures[name] = (f"aria2c exit {leechers[name].returncode}: "
                                          f"{read_log(leechers[name], 300)}")
        if time.monotonic() > deadline:
            raise LabError(f"aria2 clients still running after {setup.timeout:.0f} s")
        time.sleep(0.05)
    setup.clients_done()
    # SIGTERM makes aria2c flush its disk cache before exiting; the harness
    # checks the copies only after this. All at once: each aria2c takes about
    # a second to exit (1.2 s at N = 1), and one after the other that added
    # up to most of a minute at N = 40 (inside the CPU window then, which
    # made aria2 look idle).
    procs.stop_all(leechers.values(), timeout=20)
    return outcome
