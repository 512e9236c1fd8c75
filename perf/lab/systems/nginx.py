"""nginx as the HTTP origin: a config in the run directory, bound to one lab address.

Used by the central system (it is the whole system there) and by damselfly
(the origin its CDN fetches from). Bytes the origin sent come from the
access log's ``$bytes_sent``, which counts headers too.
"""

from __future__ import annotations

import os

from perf.lab.netns import Host
from perf.lab.procs import Procs
from perf.lab.systems.common import HTTP_PORT, wait_port

_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$remote_addr $status $bytes_sent $request_time';
    access_log {run}/access.log bench;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    client_body_temp_path {run}/tmp-body;
    proxy_temp_path {run}/tmp-proxy;
    fastcgi_temp_path {run}/tmp-fastcgi;
    uwsgi_temp_path {run}/tmp-uwsgi;
    scgi_temp_path {run}/tmp-scgi;
    default_type application/octet-stream;
    server {{
        listen {ip}:{port};
        root {root};
    }}
}}
"""


class Nginx:
    def __init__(self, procs: Procs, host: Host, root: str, run: str) -> None:
        os.makedirs(run, exist_ok=True)
        self.run, self.host = run, host
        conf = os.path.join(run, "nginx.conf")
        with open(conf, "w") as f:
            f.write(_CONF.format(run=run, ip=host.ip, port=HTTP_PORT, root=root))
        self.proc = procs.start(host, ["nginx", "-p", run, "-e", f"{run}/error.log",
                                       "-c", conf], log=f"nginx-{host.name}.log")
        wait_port(procs, host, HTTP_PORT, proc=self.proc)

    def bytes_sent(self) -> int:
        """Bytes nginx sent so far, headers included (from its access log)."""
        total = 0
        try:
            with open(os.path.join(self.run, "access.log")) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3 and parts[2].isdigit():
                        total += int(parts[2])
        except FileNotFoundError:
            pass
        return total
