"""engine.proxy.rules: where a mirror / proxy request goes, and which headers go with it."""

from __future__ import annotations

import pytest

from engine.errors import BadInput
from engine.proxy.rules import (
    client_response_headers, connect_target, plain_response, route, swarm_headers,
    tunnel_ports, upstream_request_headers)
from engine.types import Digest

HEX = "ab" * 32
BLOB = f"/v2/library/ubuntu/blobs/sha256:{HEX}"


def test_a_blob_get_goes_through_the_swarm_and_everything_else_passes():
    r = route("GET", BLOB, "https://registry.example")
    assert r.upstream == "https://registry.example" + BLOB
    assert r.blob == Digest("sha256", HEX)
    for method, target in (("HEAD", BLOB), ("GET", "/v2/"),
                           ("GET", "/v2/library/ubuntu/manifests/22.04"),
                           ("PUT", f"/v2/x/blobs/uploads/1?digest=sha256:{HEX}"),
                           ("GET", f"/v2/x/blobs/sha256:{HEX[:-2]}"),  # not a digest
                           ("GET", f"/v2/blobs/sha256:{HEX}")):  # no repository
        assert route(method, target, "https://registry.example").blob is None, target


def test_mirror_requests_go_to_the_configured_registry_under_its_prefix():
    r = route("GET", "/v2/x/manifests/1?a=1&b=2", "http://10.0.0.5:5000/prefix/")
    assert r.upstream == "http://10.0.0.5:5000/prefix/v2/x/manifests/1?a=1&b=2"


def test_containerd_names_the_registry_in_ns():
    r = route("GET", f"{BLOB}?ns=docker.io", "")
    assert r.upstream == "https://registry-1.docker.io" + BLOB and r.blob is not None
    r = route("GET", "/v2/?ns=quay.io&x=1", "https://registry.example")
    assert r.upstream == "https://quay.io/v2/?x=1"
    # ns naming the configured registry keeps its scheme (a plain-http registry).
    r = route("GET", "/v2/?ns=127.0.0.1:5000", "http://127.0.0.1:5000")
    assert r.upstream == "http://127.0.0.1:5000/v2/"
    with pytest.raises(BadInput, match="bad registry name"):
        route("GET", "/v2/?ns=evil.com/x@y", "")


def test_proxy_requests_go_where_they_say():
    url = f"http://registry.internal:5000{BLOB}?x=1"
    r = route("GET", url, "https://ignored.example")
    assert r.upstream == url and r.blob == Digest("sha256", HEX)
    assert route("GET", "http://example.com/file.tgz").blob is None


def test_requests_with_nowhere_to_go_are_refused_clearly():
    with pytest.raises(BadInput, match="mirrors no registry"):
        route("GET", "/v2/", "")
    with pytest.raises(BadInput, match="cannot proxy"):
        route("CONNECT", "example.com:443", "https://r.example")
    with pytest.raises(BadInput, match="names no host"):
        route("GET", "http:///v2/", "")


def test_hop_by_hop_headers_stop_at_the_proxy_and_the_rest_pass():
    sent = [("Host", "mirror:65001"), ("Authorization", "Bearer t"), ("Accept", "a/b"),
            ("Accept", "c/d"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
            ("Proxy-Authorization", "Basic p"), ("TE", "trailers"), ("X-Trace", "42")]
    assert upstream_request_headers(sent) == [
        ("Authorization", "Bearer t"), ("Accept", "a/b"), ("Accept", "c/d"), ("X-Trace", "42")]
    back = [("Content-Length", "5"), ("Transfer-Encoding", "chunked"),
            ("WWW-Authenticate", 'Bearer realm="r"'), ("Keep-Alive", "timeout=5"),
            ("Docker-Content-Digest", "sha256:x")]
    assert client_response_headers(back) == [
        ("Content-Length", "5"), ("WWW-Authenticate", 'Bearer realm="r"'),
        ("Docker-Content-Digest", "sha256:x")]


def test_the_swarm_gets_credentials_but_not_the_clients_range_or_conditionals():
    sent = [("Authorization", "Bearer t"), ("Range", "bytes=0-9"), ("If-None-Match", '"e"'),
            ("Cookie", "a=1"), ("cookie", "b=2"), ("Accept", "x"), ("accept", "y"),
            ("Host", "mirror"), ("Accept-Encoding", "gzip")]
    assert swarm_headers(sent) == {"Authorization": "Bearer t", "Cookie": "a=1; b=2",
                                   "Accept": "x, y"}


def test_the_proxy_reports_its_address_as_clients_write_it():
    from engine.proxy.server import Proxy

    for host, want in (("127.0.0.1", "127.0.0.1:65001"), ("::1", "[::1]:65001")):
        assert Proxy(host=host, port=65001, socket_path="/nowhere",
                     data_dir="/nowhere").address == want


def test_connect_heads_name_host_and_port_or_are_refused():
    assert connect_target(b"CONNECT registry.example:443 HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "registry.example", 443)
    assert connect_target(b"CONNECT 10.0.0.5:5000 HTTP/1.0\r\n\r\n") == ("10.0.0.5", 5000)
    assert connect_target(b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n") == ("::1", 443)
    for head in (b"CONNECT registry.example HTTP/1.1\r\n\r\n",      # no port
                 b"CONNECT registry.example:0 HTTP/1.1\r\n\r\n",
                 b"CONNECT registry.example:65536 HTTP/1.1\r\n\r\n",
                 b"CONNECT http://registry.example:443/ HTTP/1.1\r\n\r\n",
                 b"CONNECT a b:443 HTTP/1.1\r\n\r\n",
                 b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",                  # v6 needs brackets
                 b"CONNECT registry.example:443 HTTP/2\r\n\r\n",
                 b"GET registry.example:443 HTTP/1.1\r\n\r\n"):
        with pytest.raises(BadInput):
            connect_target(head)


def test_tunnel_ports_parse_a_comma_list_and_nothing_else():
    assert tunnel_ports("443") == {443}
    assert tunnel_ports(" 443, 5000 ,") == {443, 5000}
    assert tunnel_ports("") == frozenset()
    for bad in ("https", "0", "70000", "443;22", "-1"):
        with pytest.raises(BadInput):
            tunnel_ports(bad)


def test_hand_written_answers_are_framed():
    assert plain_response(200) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    answer = plain_response(403, "no")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Connection: close" in head
    assert body == b"no\n" and f"Content-Length: {len(body)}".encode() in head
