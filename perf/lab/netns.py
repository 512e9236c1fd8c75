"""Network namespaces on a private bridge, each host with kernel-enforced bandwidth.

Theory of operation. A lab is a set of network namespaces whose names start
with ``dfl-<pid>-`` (the pid of the process that made them):

- ``dfl-<pid>-sw`` holds the bridge ``br0`` and the switch end ``v<k>`` of
  every host's veth pair. Nothing is ever created in the root namespace, so
  the machine's own interfaces, routes and addresses are never touched.
- every host (``dfl-<pid>-<name>``) holds the other end, ``eth0``, with one
  address in the lab's private /24 and no route beyond it: a process in a
  host can reach the other hosts of the lab and nothing else.

Bandwidth: a host's *upload* is an HTB class on the egress of its ``eth0``
(inside the host); its *download* is the same on the egress of its switch
end ``v<k>``, which is where the bridge hands it the packets addressed to it.
So both directions are shaped by the kernel, per host. Optional latency is a
netem qdisc under the upload class (one-way delay per host, so the RTT
between two hosts is the sum of their delays); kernels without netem refuse
it with a clear error rather than running without it.

MTU: every link of a lab has the same MTU, 1500 unless the lab is built with
another (``mtu``). The emulated path costs CPU per packet: each one is
queued by two HTB classes and crosses two veth pairs and the bridge, work
that a real NIC does in hardware. The sweep runs at 9000, the jumbo frames
of datacenter networks (EC2 inside a VPC: 9001), which carries the same
bytes in fewer than half the packets (``perf.lab.run.LabConfig.mtu``).

Bridge netfilter: with the ``br_netfilter`` module loaded (Docker loads
it), the kernel hands every frame a bridge forwards to iptables, in every
namespace that has not turned it off. A switch does not run a firewall, and
on a machine without the module the lab would not pay for one, so the
switch namespace turns it off (``net.bridge.bridge-nf-call-*`` are per
namespace; the machine's own setting is not touched). At N = 40 it was
about 4 % of the machine's CPU (``br_nf_*`` in a perf profile), taken from
whichever system ran. ``Lab.settings`` records what the lab found and did,
with the hosts' TCP congestion control (the machine's default, inherited).

Cleanup: ``Lab.close`` kills every process left in the lab's namespaces and
deletes them; it runs on normal exit, on SIGINT/SIGTERM (turned into
exceptions while the lab is open), and from ``atexit``. ``cleanup_leftovers``
deletes namespaces of earlier labs whose process is gone (after a SIGKILL or
a crash), and runs when a new lab starts.

What must stay true: every address this module assigns is in the lab's own
subnet on the lab's own bridge, and only the lab's own namespaces are ever
deleted (the ``dfl-`` prefix and a dead owner pid, or our own pid).
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

PREFIX = "dfl-"
MIN_MTU, MAX_MTU = 576, 65535   # IPv4's smallest datagram every host must take; veth's largest
_NS_RE = re.compile(r"^dfl-(\d+)-")


class LabError(RuntimeError):
    """The lab cannot be built or used (not root, a tool or a kernel feature missing)."""


def sh(*args: str, check: bool = True, timeout: float = 30.0,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run one command, capture its output; a failure carries stderr in its message."""
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input,
                          stdin=subprocess.DEVNULL if input is None else None)
    if check and proc.returncode:
        raise LabError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def mac_of(ip: str) -> str:
    """A host's MAC, derived from its address (locally administered, unicast)."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ipaddress.ip_address(ip).packed)


def list_namespaces() -> list[str]:
    out = sh("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace(name: str) -> None:
    """SIGKILL every process inside namespace ``name``, then delete it."""
    for _ in range(5):
        pids = [int(p) for p in sh("ip", "netns", "pids", name, check=False).stdout.split()]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    sh("ip", "netns", "del", name, check=False)


def cleanup_leftovers(owner: int | None = None) -> list[str]:
    """Delete lab namespaces whose owner process is gone (or all of ``owner``'s)."""
    removed = []
    for name in list_namespaces():
        m = _NS_RE.match(name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == owner or (owner is None and not _pid_alive(pid)):
            kill_namespace(name)
            removed.append(name)
    for path in _leftover_dirs(owner):
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _leftover_dirs(owner: int | None) -> list[str]:
    out = []
    for entry in os.listdir("/tmp"):
        m = re.match(r"^dfl-(\d+)$", entry)
        if m and (int(m.group(1)) == owner or (owner is None and not _pid_alive(int(m.group(1))))):
            out.append(os.path.join("/tmp", entry))
    return out


@dataclass(eq=False)
class Host:
    """One namespace on the bridge: a name, an address and its shaping."""

    name: str          # short name inside the lab, e.g. "origin", "h3"
    ns: str            # the namespace name
    ip: str
    up_mbit: float     # 0: not shaped
    down_mbit: float
    latency_ms: float
    switch_port: str   # the veth end on the bridge

    def cmd(self, *args: str) -> list[str]:
        """``args`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *args]


class Lab:
    """A bridge and its hosts; a context manager that removes everything on exit."""

    def __init__(self, subnet: str = "10.77.0.0/24", *, run_root: str = "/tmp",
                 mtu: int = 1500) -> None:
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise LabError(f"lab MTU must be {MIN_MTU}-{MAX_MTU}, got {mtu}")
        if os.geteuid() != 0:
            raise LabError("the network lab needs root (ip netns, tc)")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is missing (apt-get install iproute2)")
        self.net = ipaddress.ip_network(subnet)
        if not self.net.is_private or self.net.prefixlen < 16:
            raise LabError(f"lab subnet must be a private /16 or smaller, got {subnet}")
        self.mtu = mtu
        self.pid = os.getpid()
        self.prefix = f"{PREFIX}{self.pid}-"
        self.switch = f"{self.prefix}sw"
        self.hosts: dict[str, Host] = {}
        self.dir = os.path.join(run_root, f"dfl-{self.pid}")
        self._closed = True
        self._lock = threading.Lock()
        self._old_handlers: dict[int, object] = {}
        self.settings: dict[str, str] = {}

    # --- lifecycle -------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        cleanup_leftovers()                  # labs of processes that died
        cleanup_leftovers(self.pid)          # an earlier lab of this very process
        self._closed = False
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old_handlers[sig] = signal.signal(sig, _raise_exit)
        os.makedirs(self.dir, exist_ok=True)
        sh("ip", "netns", "add", self.switch)
        self._ip_n(self.switch, "link", "set", "lo", "up")
        self._ip_n(self.switch, "link", "add", "br0", "mtu", str(self.mtu), "type", "bridge")
        self._ip_n(self.switch, "link", "set", "br0", "up")
        self.settings = {"bridge_netfilter": self._bridge_netfilter_off(),
                         "tcp_congestion_control": self._sysctl(
                             self.switch, "net/ipv4/tcp_congestion_control") or "?"}

    def close(self) -> None:
        """Kill what runs in the lab, delete its namespaces and files. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for host in list(self.hosts.values()):
            kill_namespace(host.ns)
        kill_namespace(self.switch)
        cleanup_leftovers(self.pid)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.hosts.clear()
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers.clear()
        atexit.unregister(self.close)

    # --- building --------------------------------------------------------------

    def address(self, index: int) -> str:
        """The ``index``-th address of the lab subnet (1 = the first host address)."""
        addr = self.net.network_address + index
        if addr not in self.net or addr in (self.net.network_address,
                                            self.net.broadcast_address):
            raise LabError(f"address #{index} is outside {self.net}")
        return str(addr)

    def add_host(self, name: str, index: int, *, up_mbit: float = 0, down_mbit: float = 0,
                 latency_ms: float = 0) -> Host:
        """A namespace with ``eth0`` on the bridge at address #``index``, shaped."""
        if name in self.hosts:
            raise LabError(f"host {name} exists")
        port = f"v{len(self.hosts)}"
        host = Host(name, self.prefix + name, self.address(index), up_mbit, down_mbit,
                    latency_ms, port)
        sh("ip", "netns", "add", host.ns)
        self.hosts[name] = host
        self._ip_n(host.ns, "link", "set", "lo", "up")
        mtu = str(self.mtu)
        self._ip_n(self.switch, "link", "add", port, "mtu", mtu, "type", "veth",
                   "peer", "name", "eth0", "mtu", mtu, "netns", host.ns)
        self._ip_n(self.switch, "link", "set", port, "master", "br0", "up")
        self._ip_n(host.ns, "link", "set", "eth0", "address", mac_of(host.ip))
        self._ip_n(host.ns, "addr", "add", f"{host.ip}/{self.net.prefixlen}", "dev", "eth0")
        self._ip_n(host.ns, "link", "set", "eth0", "up")
        self._pin_neighbours(host)
        if up_mbit or latency_ms:
            shape(host.ns, "eth0", up_mbit, latency_ms)
        if down_mbit:
            shape(self.switch, port, down_mbit, 0)
        return host

    def _bridge_netfilter_off(self) -> str:
        """Keep the lab's bridge out of iptables (module docstring): "off", "absent"
        (no br_netfilter), or "on" where the kernel refused the change."""
        keys = [f"net/bridge/bridge-nf-call-{t}" for t in ("iptables", "ip6tables", "arptables")]
        present = [k for k in keys if self._sysctl(self.switch, k) is not None]
        if not present:
            return "absent"          # br_netfilter not loaded: nothing to turn off
        for key in present:
            proc = sh("ip", "netns", "exec", self.switch, "tee", f"/proc/sys/{key}",
                      input="0\n", check=False)
            if proc.returncode:      # /proc/sys read-only (a container): say so, run anyway
                return "on"
        return "off"

    @staticmethod
    def _sysctl(ns: str, key: str) -> str | None:
        """``/proc/sys/<key>`` as seen in ``ns`` (those under net/ are per namespace)."""
        proc = sh("ip", "netns", "exec", ns, "cat", f"/proc/sys/{key}", check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def _ip_n(self, ns: str, *args: str) -> None:
        sh("ip", "-n", ns, *args)

    def _pin_neighbours(self, new: Host) -> None:
        """Permanent ARP entries between ``new`` and every other host.

        The kernel's neighbour table is one for all namespaces, and its
        limit (gc_thresh3, 1024 by default) counts every namespace's entries:
        41 hosts that all talk to each other need ~1,700, and past the limit
        connects fail ("neighbor table overflow!", No route to host, SYNs
        never sent). Permanent entries are not counted against it, and the
        lab knows every address and MAC already, so nobody ARPs.
        """
        others = [h for h in self.hosts.values() if h is not new]
        if others:
            batch = "".join(f"neigh replace {h.ip} lladdr {mac_of(h.ip)} dev eth0 nud permanent\n"
                            for h in others)
            sh("ip", "-n", new.ns, "-batch", "-", input=batch)
        for h in others:
            self._ip_n(h.ns, "neigh", "replace", new.ip, "lladdr", mac_of(new.ip), "dev",
                       "eth0", "nud", "permanent")

    # --- measuring -------------------------------------------------------------

    def sent_bytes(self) -> dict[str, int]:
        """Bytes each host has sent onto the bridge so far (rx of its switch end)."""
        out = sh("ip", "-n", self.switch, "-s", "-j", "link", "show").stdout
        by_port = {link["ifname"]: link["stats64"]["rx"]["bytes"]
                   for link in json.loads(out) if "stats64" in link}
        return {h.name: by_port.get(h.switch_port, 0) for h in self.hosts.values()}

    def namespaces(self) -> list[str]:
        return [n for n in list_namespaces() if n.startswith(self.prefix)]


QUEUE_SECONDS = 0.1


def shape(ns: str, dev: str, rate_mbit: float, latency_ms: float) -> None:
    """Egress of ``dev`` in ``ns``: an HTB class at ``rate_mbit`` (0: unshaped), netem delay.

    HTB rather than TBF at the root because it takes a child qdisc, which is
    where the delay goes; without a delay the leaf is a bfifo sized by
    ``queue_bytes`` (this kernel has neither fq_codel nor sfq).
    """
    if rate_mbit:
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb",
           "default", "1")
        # A burst of a few ms of traffic at the rate: small enough to keep the
        # rate honest over 100 ms, big enough for veth's 64 KiB GSO packets.
        burst = max(64 * 1024, int(rate_mbit * 1e6 / 8 * 0.002))
        sh("tc", "-n", ns, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1",
           "htb", "rate", f"{rate_mbit}mbit", "ceil", f"{rate_mbit}mbit",
           "burst", str(burst), "cburst", str(burst))
        parent = ["parent", "1:1", "handle", "10:"]
    else:
        parent = ["root", "handle", "10:"]
    if latency_ms:
        proc = sh("tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, "netem", "delay",
                  f"{latency_ms}ms", "limit", "100000", check=False)
        if proc.returncode:
            raise LabError("latency needs the netem qdisc, which this kernel lacks "
                           f"({proc.stderr.strip()}); run without --latency-ms")
    elif rate_mbit:
        sh("tc", "-n", ns, "qdisc", "add", "dev", dev, *parent, "bfifo", "limit",
           str(queue_bytes(rate_mbit)))


def queue_bytes(rate_mbit: float) -> int:
    """The shaped queue's size: ``QUEUE_SECONDS`` of traffic at the rate.

    HTB's default leaf is a pfifo of the device's txqueuelen (1000) *packets*;
    on a veth those are GSO packets of up to 64 KiB, so the queue held up to
    64 MB, 5 s at 100 Mbit/s. At 40 hosts every download link sat in that
    queue: SYNs and ARP waited seconds behind bulk data, and connects timed
    out. A NIC's 1000 packets of 1514 bytes hold ~1.5 MB; a byte limit of
    100 ms at the rate is that order, for any rate.
    """
    return max(2 * 65536, int(rate_mbit * 1e6 / 8 * QUEUE_SECONDS))


def _raise_exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)
