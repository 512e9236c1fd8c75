"""What the registry mirror / HTTP proxy does with one request. Sans-IO.

Requests reach the proxy (engine.proxy.server) in one of two forms:

- **mirror** (Docker ``registry-mirrors``, Podman's registries.conf mirror,
  containerd's hosts.toml): an origin-form target, ``/v2/...``. It goes to
  the configured upstream registry, or, when containerd names the registry
  in the ``ns`` query parameter, to that registry over https
  (``docker.io`` means ``registry-1.docker.io``);
- **proxy** (``HTTP_PROXY``): an absolute-form target, ``http://host/...``,
  which goes where it says;
- **tunnel** (``HTTPS_PROXY``): ``CONNECT host:port``, to a port the daemon
  allows (``connect_target``, ``tunnel_ports``); TLS end to end after that,
  so the bytes are carried as they are (engine.proxy.tunnel).

``route`` decides where to: a GET of a registry blob (``/v2/<name>/blobs/
sha256:<hex>``, content-addressed, so the digest is the integrity check) goes
through the swarm; everything else (the ``/v2/`` ping and its auth
challenge, manifests, tag lists, HEADs, uploads) passes through to the
upstream unchanged, headers included. The client fetches its token from
the registry's auth service itself, once; the proxy never talks to it.

Headers: hop-by-hop headers (RFC 9110 7.6.1, plus every header a
``Connection`` header names) stop at the proxy in both directions; every
other header passes, Authorization included.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

from engine.errors import BadInput
from engine.types import Digest

HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
))
# Docker Hub's registry answers at another name than the one images carry.
REGISTRY_ALIASES = {"docker.io": "registry-1.docker.io", "index.docker.io": "registry-1.docker.io"}
_BLOB = re.compile(r"/v2/(?:[^/]+/)+blobs/(sha256:[0-9a-f]{64})\Z")
_HOST = re.compile(r"[A-Za-z0-9.-]+(?::\d{1,5})?\Z")
_AUTHORITY = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})\Z")
REASONS = {200: "Connection established", 400: "Bad Request", 403: "Forbidden",
           431: "Request Header Fields Too Large", 502: "Bad Gateway", 504: "Gateway Timeout"}


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: ``upstream`` (an absolute URL); ``blob`` is set
    when its body is fetched through the swarm instead of passed through."""

    upstream: str
    blob: Digest | None = None


def route(method: str, target: str, registry: str = "") -> Route:
    """Route a request line's ``method`` and raw ``target``; ``registry`` is the
    upstream for mirror requests (``https://host[:port][/prefix]``, may be empty).

    BadInput when the target cannot be served: a mirror request with no
    upstream to go to, or a scheme other than http(s).
    """
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            raise BadInput("proxy request names no host")
        path = parts.path or "/"
        upstream = target
        query = parts.query
    elif target.startswith("/"):
        path, _, query = target.partition("?")
        base, query = _mirror_base(query, registry)
        upstream = base + path + (f"?{query}" if query else "")
    else:
        raise BadInput(f"cannot proxy request target {target[:80]!r} "
                       "(plain http and registry mirror requests only)")
    if method == "GET":
        m = _BLOB.match(path)
        if m:
            return Route(upstream, Digest.parse(m.group(1)))
    return Route(upstream)


def connect_target(head: bytes) -> tuple[str, int]:
    """The (host, port) a CONNECT request head (up to its blank line) asks
    for; BadInput unless the request line is ``CONNECT host:port HTTP/1.x``
    (RFC 9110 9.3.6: authority-form, an IPv6 host in brackets)."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"CONNECT" or parts[2] not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise BadInput(f"not a CONNECT request line: {line[:80]!r}")
    m = _AUTHORITY.match(parts[1].decode("ascii", "replace"))
    if not m or not 0 < int(m.group(3)) < 65536:
        raise BadInput(f"CONNECT needs host:port, got {parts[1][:80]!r}")
    return m.group(1) or m.group(2), int(m.group(3))


def tunnel_ports(text: str) -> frozenset[int]:
    """``"443,5000"`` -> {443, 5000}; an empty text allows no tunnel. BadInput
    for anything else."""
    ports = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or not 0 < int(item) < 65536:
            raise BadInput(f"not a port: {item[:20]!r} (use e.g. 443,5000)")
        ports.add(int(item))
    return frozenset(ports)


def plain_response(status: int, text: str = "") -> bytes:
    """A whole HTTP/1.1 answer written by hand: the tunnel's 200 (no body,
    no framing: the tunnel's bytes follow), or an error that ends the
    connection."""
    head = f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
    if status == 200:
        return (head + "\r\n").encode("ascii")
    body = (text + "\n").encode()
    return (head + f"Content-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}"
            "\r\nConnection: close\r\n\r\n").encode("ascii") + body


def _mirror_base(query: str, registry: str) -> tuple[str, str]:
    """The upstream base URL for a mirror request, and its query without ``ns``."""
    params = parse_qsl(query, keep_blank_values=True)
    ns = next((v for k, v in params if k == "ns"), None)
    base = registry.rstrip("/")
    if ns is not None:
        params = [(k, v) for k, v in params if k != "ns"]
        query = urlencode(params)
        host = REGISTRY_ALIASES.get(ns.lower(), ns.lower())
        if not _HOST.match(host):
            raise BadInput(f"bad registry name in ns: {ns[:80]!r}")
        if not base or urlsplit(base).netloc.lower() not in (host, ns.lower()):
            base = f"https://{host}"
    if not base:
        raise BadInput("this dfdaemon mirrors no registry: start it with --registry, "
                       "or send proxy requests (absolute URLs)")
    return base, query


def _dropped(headers: Iterable[tuple[str, str]]) -> set[str]:
    """Hop-by-hop names, and every name a Connection header lists."""
    drop = set(HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == "connection":
            drop.update(t.strip().lower() for t in value.split(",") if t.strip())
    return drop


def upstream_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """A client's headers as they go upstream: end-to-end ones only, no Host
    (the upstream's own goes instead)."""
    headers = list(headers)
    drop = _dropped(headers) | {"host"}
    return [(k, v) for k, v in headers if k.lower() not in drop]


def client_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """An upstream answer's headers as they go back to the client."""
    headers = list(headers)
    drop = _dropped(headers)
    return [(k, v) for k, v in headers if k.lower() not in drop]


def swarm_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers the swarm's origin fetch carries for a blob (credentials,
    user agent...): end-to-end ones, repeated names joined as RFC 9110 allows.
    Range and conditionals are the proxy's business with its client, not the
    swarm's with the origin; Accept-Encoding too: the swarm stores the bytes
    the digest names, never a compressed form of them."""
    out: dict[str, str] = {}
    for name, value in upstream_request_headers(headers):
        key = name.lower()
        if key in ("range", "if-range", "if-none-match", "if-modified-since", "if-match",
                   "if-unmodified-since", "content-length", "expect", "accept-encoding"):
            continue
        sep = "; " if key == "cookie" else ", "
        match = next((k for k in out if k.lower() == key), None)
        if match is None:
            out[str(name)] = str(value)  # plain str: aiohttp's names are a subclass
        else:
            out[match] = out[match] + sep + value
    return out
