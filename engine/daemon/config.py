"""dfdaemon's configuration, and the options dfget shares with it.

Each option is declared once (engine.config): the flag, the environment
variable (``DFDAEMON_<NAME>`` / ``DFGET_<NAME>``), the TOML key and the help
all come from the field below. ``HostOptions`` holds what both programs need
to find the same daemon, so it is declared once and inherited.

Default data directory: ``/var/lib/damselfly`` for root (a system service),
otherwise ``$XDG_CACHE_HOME/damselfly`` or ``~/.cache/damselfly``: the piece
cache is disposable, which is what a cache directory is for.

Sizes take a suffix K, M, G or T (powers of 1024; ``10M`` = 10 MiB/s);
durations take s, m, h or d (``3h``); a bare number is bytes or seconds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from engine.config import ConfigSpec, non_negative, option, port_check
from engine.errors import BadInput, ConfigError
from engine.proxy.rules import tunnel_ports

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b?)?\s*\Z", re.I)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z", re.I)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``10M`` -> 10485760. BadInput when it is not a size."""
    m = _SIZE.match(text)
    if not m:
        raise BadInput(f"not a size: {text!r} (use e.g. 512K, 10M, 1G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str) -> float:
    """``3h`` -> 10800.0. BadInput when it is not a duration."""
    m = _DURATION.match(text)
    if not m:
        raise BadInput(f"not a duration: {text!r} (use e.g. 30s, 10m, 3h)")
    return float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]


def _checker(parse):
    def check(value: str) -> str | None:
        try:
            parse(value)
        except BadInput as exc:
            return f"is invalid: {exc}"
        return None
    return check


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/damselfly"
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(cache, "damselfly")


def proxy_address(text: str) -> tuple[str, int]:
    """``127.0.0.1:65001`` or ``[::1]:0`` -> (host, port). BadInput when it is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadInput(f"not an ip:port address: {text!r} (use e.g. 127.0.0.1:65001)")
    return host, int(port)


def _proxy_check(value: str) -> str | None:
    return _checker(proxy_address)(value) if value else None


def supernode_url(text: str) -> str:
    """``host:port`` or a URL -> ``http://host:port`` (no trailing slash)."""
    text = text.strip().rstrip("/")
    return text if text.startswith(("http://", "https://")) else f"http://{text}"


@dataclass(frozen=True, slots=True)
class HostOptions:
    """What dfget and dfdaemon must agree on to find each other."""

    data_dir: str = option(default_data_dir(), "piece cache, control block and socket live here")
    socket: str | None = option(None, "local API socket (default <data-dir>/dfdaemon.sock)")
    supernode: list[str] = option((), "supernodes, host:port or URL (comma separated)")

    @property
    def data_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.data_dir))

    @property
    def socket_path(self) -> str:
        return os.path.abspath(self.socket) if self.socket else os.path.join(
            self.data_path, "dfdaemon.sock")

    @property
    def supernode_urls(self) -> list[str]:
        return [supernode_url(s) for s in self.supernode]


@dataclass(frozen=True, slots=True)
class DaemonConfig(HostOptions):
    listen_ip: str = option("0.0.0.0", "address the upload server listens on")
    advertise_ip: str = option("", "address peers reach us at (default: the listen ip, or "
                                   "the route toward the first supernode)")
    upload_port: int = option(0, "upload port, shared by every worker (0: any free port)",
                              check=port_check)
    workers: int = option(0, "worker processes (0: one per core)", check=non_negative)
    parallel: int = option(4, "pieces in flight per download", check=lambda v: None
                           if 1 <= v <= 64 else "must be within 1..64")
    upload_slots: int = option(16, "concurrent piece uploads per worker",
                               check=lambda v: None if v >= 1 else "must be >= 1")
    upload_limit: str = option("0", "host-wide upload limit in bytes/s (0: none)",
                               check=_checker(parse_size), metavar="SIZE")
    download_limit: str = option("0", "host-wide download limit in bytes/s (0: none)",
                                 check=_checker(parse_size), metavar="SIZE")
    task_ttl: str = option("3h", "remove a finished task this long after its last use",
                           check=_checker(parse_duration), metavar="DURATION")
    idle_exit: str = option("0", "exit after this long without local requests or uploads (0: never)",
                            check=_checker(parse_duration), metavar="DURATION")
    back_source: bool = option(True, "let downloads fall back to the origin")
    proxy: str = option("", "serve the registry mirror / HTTP proxy on ip:port (port 0: any "
                            "free port; empty: off)", check=_proxy_check,
                        metavar="IP:PORT")
    registry: str = option("", "upstream registry the mirror serves, e.g. "
                               "https://registry-1.docker.io (needs --proxy)",
                           check=lambda v: None if not v or v.startswith(("http://", "https://"))
                           else "must be an http(s) URL", metavar="URL")
    tunnel_ports: str = option("443", "ports the proxy's CONNECT tunnels (HTTPS_PROXY) may "
                                      "reach, comma separated (empty: no tunnels)",
                               check=_checker(tunnel_ports), metavar="PORTS")
    peer_id: str = option("", "peer id (default: kept in <data-dir>/peer-id)")
    location: str = option("", "location label; the scheduler prefers nearby peers")
    ready_file: str | None = option(None, "write {pid, upload_port, socket} here once ready")
    ready_fd: int | None = option(None, "write the ready JSON line to this inherited fd")
    log_level: str = option("info", "logging level",
                            choices=("debug", "info", "warning", "error"))

    def __post_init__(self) -> None:
        if self.workers > 256:
            raise ConfigError("workers must be at most 256")
        if self.registry and not self.proxy:
            raise ConfigError("registry is the mirror's upstream: it needs proxy (ip:port)")

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    @property
    def upload_limit_bytes(self) -> int:
        return parse_size(self.upload_limit)

    @property
    def download_limit_bytes(self) -> int:
        return parse_size(self.download_limit)

    @property
    def task_ttl_seconds(self) -> float:
        return parse_duration(self.task_ttl)

    @property
    def idle_exit_seconds(self) -> float:
        return parse_duration(self.idle_exit)


SPEC = ConfigSpec(DaemonConfig, env_prefix="DFDAEMON", prog="dfdaemon",
                  description="The damselfly peer daemon: a coordinator and its workers.")
