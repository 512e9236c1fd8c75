"""The supernode's options, each declared once (see engine.config).

Flags are ``--data-dir``, env ``DAMSELFLY_SUPERNODE_DATA_DIR``, TOML key
``data_dir``; ``supernode --help`` lists them all, ``--print-config`` shows
the merged result. Tests build ``SupernodeConfig(...)`` directly.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from engine.config import ConfigSpec, non_negative, option, port_check, positive
from engine.errors import ConfigError
from supernode.scheduler.config import SchedulerConfig


def _scheduler_default(name: str):
    # The scheduler core declares its own defaults; this file only exposes them.
    return next(f.default for f in dataclasses.fields(SchedulerConfig) if f.name == name)


@dataclass(frozen=True, slots=True)
class SupernodeConfig:
    host: str = option("127.0.0.1", "address the API and the CDN upload server listen on")
    port: int = option(8002, "API port (0: any free port; the bound port is printed)",
                       check=port_check)
    upload_port: int = option(8001, "CDN upload server port, serving pieces to peers "
                                    "(0: any free port)", check=port_check)
    advertise_host: str | None = option(
        None, "address peers use to reach the CDN upload server (default: host; "
              "required when host is a wildcard)")
    data_dir: str = option("~/.damselfly/supernode", "CDN piece cache directory")
    ready_file: str | None = option(None, "write the bound ports here as JSON once ready")
    log_level: str = option("info", "logging level",
                            choices=("debug", "info", "warning", "error"))
    uvloop: bool = option(True, "run on uvloop")
    origin_connect_timeout: float = option(10.0, "seconds to connect to the origin",
                                           check=positive)
    origin_read_timeout: float = option(30.0, "seconds without origin bytes before the "
                                              "connection counts as broken", check=positive)
    origin_retries: int = option(3, "retries after a broken origin connection or a 5xx, "
                                    "per fetch", check=non_negative)
    origin_retry_backoff: float = option(0.5, "first pause before an origin retry, "
                                              "doubling each time", check=non_negative)
    negative_ttl: float = option(10.0, "seconds an origin failure is remembered and "
                                       "answered without asking the origin again",
                                 check=non_negative)
    revalidate_after: float = option(60.0, "seconds a cached file is trusted before a "
                                           "registration revalidates it with the origin "
                                           "(If-None-Match / If-Modified-Since)",
                                     check=non_negative)
    revalidate_timeout: float = option(10.0, "seconds a registration waits for a "
                                             "revalidation before serving the cache",
                                       check=positive)
    cache_quota_mib: int = option(0, "MiB of finished files the CDN cache keeps: beyond it "
                                     "the least recently registered files that no peer is "
                                     "registered for are removed (0: no limit)",
                                  check=non_negative)
    disk_floor_mib: int = option(64, "MiB of the data dir's filesystem kept free",
                                 check=non_negative)
    tick_interval: float = option(1.0, "seconds between scheduler clock ticks "
                                       "(expiry of assignments and heartbeats)",
                                  check=positive)
    cdn_upload_slots: int = option(_scheduler_default("cdn_upload_slots"),
                                   "pieces the CDN uploads at once", check=positive)
    peer_upload_slots: int = option(_scheduler_default("peer_upload_slots"),
                                    "default upload slots of a peer", check=positive)
    heartbeat_timeout: float = option(_scheduler_default("heartbeat_timeout"),
                                      "seconds of silence before a peer is dropped",
                                      check=positive)
    assignment_timeout: float = option(_scheduler_default("assignment_timeout"),
                                       "seconds before an unreported assignment expires",
                                       check=positive)
    wait_ms: int = option(_scheduler_default("wait_ms"),
                          "how long a peer with nothing to fetch waits before asking again",
                          check=non_negative)
    pending_wait_ms: int = option(_scheduler_default("pending_wait_ms"),
                                  "the same while the origin has not told the length yet",
                                  check=non_negative)

    def __post_init__(self) -> None:
        if self.advertise_host is None and self.host in ("0.0.0.0", "::", ""):
            raise ConfigError("host is a wildcard address: set advertise_host to the "
                              "address peers can reach")

    @property
    def data_path(self) -> str:
        return os.path.abspath(os.path.expanduser(self.data_dir))

    @property
    def advertised(self) -> str:
        return self.advertise_host or self.host

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(cdn_upload_slots=self.cdn_upload_slots,
                               peer_upload_slots=self.peer_upload_slots,
                               heartbeat_timeout=self.heartbeat_timeout,
                               assignment_timeout=self.assignment_timeout,
                               wait_ms=self.wait_ms, pending_wait_ms=self.pending_wait_ms)


SPEC = ConfigSpec(SupernodeConfig, env_prefix="DAMSELFLY_SUPERNODE", prog="supernode",
                  description="damselfly supernode: scheduler, CDN and its upload server")
