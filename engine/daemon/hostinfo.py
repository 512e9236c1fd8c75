"""Who this daemon is on the host and to the swarm: data-dir lock, upload
port, peer id and the address peers use.

The peer id is kept in ``<data>/peer-id`` so a restarted daemon is the same
peer (its cached pieces are still its own); two daemons with their own data
directories on one host are two peers. The advertised address is the one
configured, else the listen address when it is a specific one, else the
local address of the route toward the first supernode (a UDP connect sends
no packet), else loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import socket
from urllib.parse import urlsplit

from engine.errors import ConfigError, from_oserror
from engine.meta import write_atomically
from engine.types import PeerId

_UNSAFE = re.compile(r"[^A-Za-z0-9._:@-]")
_WILDCARDS = ("0.0.0.0", "::", "")


def load_peer_id(data: str, configured: str = "") -> str:
    if configured:
        return str(PeerId(configured))  # validates
    path = os.path.join(data, "peer-id")
    try:
        with open(path, encoding="utf-8") as f:
            return str(PeerId(f.read().strip()))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise from_oserror(exc, f"reading {path}") from exc
    host = _UNSAFE.sub("-", socket.gethostname())[:100] or "host"
    peer_id = f"{host}-{secrets.token_hex(4)}"
    write_atomically(path, peer_id.encode() + b"\n")
    return peer_id


def advertise_ip(config) -> str:
    if config.advertise_ip:
        return config.advertise_ip
    if config.listen_ip not in _WILDCARDS:
        return config.listen_ip
    for node in config.supernode_urls[:1]:
        parts = urlsplit(node)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((parts.hostname, parts.port or 80))
                return probe.getsockname()[0]
        except (OSError, TypeError):
            pass
    return "127.0.0.1"


def reserve_port(ip: str, port: int) -> socket.socket:
    """Bind (never listen) the upload port with SO_REUSEPORT and keep it: workers
    bind the same port, and while this socket lives no other program can take
    the port, even while every worker is being restarted."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot bind the upload port {ip}:{port}: {exc.strerror}") from exc
    return sock


@contextlib.contextmanager
def data_dir_lock(data: str):
    """One coordinator per data directory: an flock held for the daemon's life."""
    path = os.path.join(data, "dfdaemon.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise from_oserror(exc, f"opening {path}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise ConfigError(f"another dfdaemon (pid {holder}) already uses {data}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
