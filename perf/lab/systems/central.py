"""The central baseline: nginx on the server hosts, one curl per client host.

With one server host (the supernode lives on the origin host) every client
fetches from the origin. With two (the supernode has its own host), the
second runs nginx too, as a mirror with the same upload, and clients are
split between them: every system gets the same capacity outside the N.
"""

from __future__ import annotations

import os

from perf.lab.procs import Finish, read_log
from perf.lab.systems.common import Outcome, Setup, clean_env
from perf.lab.systems.nginx import Nginx


def run_central(setup: Setup) -> Outcome:
    servers = []
    for host in setup.servers:
        root = os.path.join(setup.work, f"www-{host.name}")
        os.makedirs(root, exist_ok=True)
        os.link(setup.file_path, os.path.join(root, setup.file_name))
        servers.append(Nginx(setup.procs, host, root,
                             os.path.join(setup.work, f"nginx-{host.name}")))
    finish, outputs, procs = Finish(), {}, {}
    env = clean_env()
    t0 = setup.start_clock()
    for i, host in enumerate(setup.clients):
        server = setup.servers[i % len(setup.servers)]
        out = os.path.join(setup.client_dir(host), setup.file_name)
        outputs[host.name] = out
        proc = setup.procs.start(host, ["curl", "-sS", "--fail", "-o", out, setup.url(server)],
                                 log=f"curl-{host.name}.log", env=env)
        procs[host.name] = proc
        finish.watch(host.name, proc)
    finish.join(setup.timeout)
    setup.clients_done()
    outcome = Outcome({n: t - t0 for n, t in finish.times.items()}, outputs,
                      origin_bytes=servers[0].bytes_sent())
    for name, code in finish.codes.items():
        if code:
            outcome.failures[name] = f"curl exit {code}: {read_log(procs[name], 300)}"
    return outcome
