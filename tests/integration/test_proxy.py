"""dfdaemon as a registry mirror and HTTP proxy, against a registry with token auth
(tests.integration.fakeregistry): blobs through the swarm, the rest passed through,
and no cached byte for a client the registry would refuse."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from engine.errors import ConfigError
from tests.helpers import REPO, dead_port
from tests.integration.fakeregistry import MANIFEST_TYPE, FakeRegistry
from tests.integration.swarm import Daemon, Services, scratch_dir

pytestmark = pytest.mark.integration
MIB = 1 << 20
REPO_NAME = "team/app"


@pytest.fixture(scope="module")
def world():
    """A supernode, a registry with a config blob and two layers, and two
    dfdaemons mirroring it."""
    blobs = [b'{"architecture":"amd64","os":"linux"}', os.urandom(3 * MIB + 17),
             os.urandom(2 * MIB)]
    daemons: list[Daemon] = []
    with scratch_dir("dfp-") as root:
        try:
            with Services(root) as services, FakeRegistry(REPO_NAME, blobs) as registry:
                for name in ("a", "b"):
                    daemons.append(Daemon(os.path.join(root, name), [services.supernode_url],
                                          "--workers", "1", "--proxy", "127.0.0.1:0",
                                          "--registry", registry.url))
                yield registry, daemons
        finally:
            for d in daemons:
                d.close()


def call(url: str, headers: dict[str, str] | None = None, method: str = "GET",
         proxy: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request, no redirect followed; (status, headers, body) whatever the status."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    handlers = [NoRedirect(), urllib.request.ProxyHandler({"http": proxy} if proxy else {})]
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.build_opener(*handlers).open(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def login(mirror: str) -> dict[str, str]:
    """What a client does: ping, read the challenge, get a token from the realm."""
    status, headers, _ = call(f"{mirror}/v2/")
    assert status == 401
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=")
    realm = challenge.split('realm="', 1)[1].split('"', 1)[0]
    _, _, body = call(realm + "?service=x&scope=repository:team/app:pull")
    return {"Authorization": "Bearer " + orjson.loads(body)["token"]}


def mirror_url(daemon: Daemon) -> str:
    return "http://" + daemon.ready["proxy"]


def test_an_image_pulled_through_two_mirrors_leaves_the_registry_once(world):
    registry, (a, b) = world
    heads, tokens = dict(registry.heads), registry.token_calls  # other tests may run first
    for daemon in (a, b):
        before = daemon.stats()["proxy"]
        mirror = mirror_url(daemon)
        auth = login(mirror)
        status, headers, body = call(f"{mirror}/v2/{REPO_NAME}/manifests/1",
                                     {**auth, "Accept": MANIFEST_TYPE})
        assert status == 200 and body == registry.manifest
        assert headers["Docker-Content-Digest"] == registry.manifest_digest
        for digest, data in registry.blobs.items():
            status, headers, body = call(f"{mirror}/v2/{REPO_NAME}/blobs/{digest}", auth)
            assert status == 200, body[:200]
            assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
            assert headers["Docker-Content-Digest"] == digest
            assert int(headers["Content-Length"]) == len(data)
        stats = daemon.stats()["proxy"]
        assert stats["blobs"] - before["blobs"] == len(registry.blobs)
        assert stats["fallbacks"] == before["fallbacks"] == 0
    # The bytes of each blob left the registry once, for the whole swarm;
    # each mirror asked once per blob whether its client may have it.
    assert all(registry.gets[d] == 1 and registry.storage_gets[d] == 1
               for d in registry.blobs), (registry.gets, registry.storage_gets)
    assert all(registry.heads[d] - heads.get(d, 0) == 2 for d in registry.blobs), registry.heads
    # The clients' own two logins; the mirrors asked the auth service for nothing.
    assert registry.token_calls - tokens == 2


def test_a_cached_blob_goes_to_no_client_the_registry_refuses(world):
    registry, (a, _) = world
    mirror = mirror_url(a)
    auth = login(mirror)
    digest = next(iter(registry.blobs))
    url = f"{mirror}/v2/{REPO_NAME}/blobs/{digest}"
    assert call(url, auth)[0] == 200  # cached on this host from now on
    gets = registry.gets[digest]
    for headers in ({}, {"Authorization": "Bearer forged"}):
        status, resp_headers, body = call(url, headers)
        assert status == 401, status
        assert resp_headers["WWW-Authenticate"].startswith("Bearer realm=")
        assert registry.blobs[digest] not in body and b"UNAUTHORIZED" in body
    assert registry.gets[digest] == gets
    assert a.stats()["proxy"]["refused_by_upstream"] >= 2


def test_headers_pass_through_and_manifests_need_their_accept_header(world):
    registry, (a, _) = world
    mirror = mirror_url(a)
    auth = login(mirror)
    url = f"{mirror}/v2/{REPO_NAME}/manifests/1"
    assert call(url, auth)[0] == 406  # no Accept: the registry refuses, and says so
    status, _, body = call(url, {**auth, "Accept": MANIFEST_TYPE, "X-Trace": "t-42"})
    assert status == 200 and body == registry.manifest
    assert registry.seen_headers[-1]["X-Trace"] == "t-42"
    status, headers, body = call(url, {**auth, "Accept": MANIFEST_TYPE}, method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Length"] == str(len(registry.manifest))  # what resolvers read
    assert headers["Docker-Content-Digest"] == registry.manifest_digest


def test_ranges_unknown_blobs_and_proxy_requests(world):
    registry, (a, b) = world
    mirror = mirror_url(a)
    auth = login(mirror)
    digest, data = list(registry.blobs.items())[1]
    status, headers, body = call(f"{mirror}/v2/{REPO_NAME}/blobs/{digest}",
                                 {**auth, "Range": "bytes=1000-1999"})
    assert status == 206 and body == data[1000:2000], status
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    missing = "sha256:" + hashlib.sha256(b"not in the registry").hexdigest()
    status, _, body = call(f"{mirror}/v2/{REPO_NAME}/blobs/{missing}", auth)
    assert status == 404 and b"BLOB_UNKNOWN" in body
    # As an HTTP proxy (absolute URLs), for a host it was not told about.
    before = b.stats()["proxy"]["blobs"]
    status, _, body = call(f"{registry.url}/v2/{REPO_NAME}/blobs/{digest}", login(mirror),
                           proxy=mirror_url(b))
    assert status == 200 and body == data
    assert b.stats()["proxy"]["blobs"] == before + 1


def test_request_bodies_pass_whole_and_a_broken_answer_stays_short(world):
    registry, (a, _) = world
    body = os.urandom(3 * MIB + 5)
    for url, proxy in ((f"{mirror_url(a)}/echo", None), (f"{registry.url}/echo", mirror_url(a))):
        req = urllib.request.Request(url, data=body, method="PATCH")
        with urllib.request.build_opener(urllib.request.ProxyHandler(
                {"http": proxy} if proxy else {})).open(req, timeout=60) as resp:
            seen = orjson.loads(resp.read())
        assert seen == {"method": "PATCH", "sha256": hashlib.sha256(body).hexdigest(),
                        "length": len(body), "content_length": str(len(body)),
                        "chunked": False}, seen
    with pytest.raises(http.client.IncompleteRead) as caught:
        with urllib.request.urlopen(f"{mirror_url(a)}/broken", timeout=60) as resp:
            resp.read()
    assert len(caught.value.partial) == 1000


def test_unroutable_requests_get_clear_errors(world):
    _, (a, _) = world
    status, _, body = call(f"{mirror_url(a)}/v2/?ns=bad%20host")
    assert status == 400 and b"bad registry name" in body


def test_a_proxy_port_in_use_is_a_configuration_error():
    with socket.socket() as busy, scratch_dir("dfq-") as data:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "engine.cli.dfdaemon", "--data-dir", data,
             "--listen-ip", "127.0.0.1", "--workers", "1", "--proxy", f"127.0.0.1:{port}"],
            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == ConfigError.exit_code, r.stderr
    assert f"proxy cannot listen on 127.0.0.1:{port}" in r.stderr


def test_when_the_swarm_cannot_deliver_the_registry_still_does():
    """No supernode and no back-to-source for the daemon: the proxy passes the
    blob request through, and the client gets the blob from the registry."""
    blobs = [b'{"os":"linux"}', os.urandom(MIB + 3)]
    with (scratch_dir("dfr-") as root, FakeRegistry(REPO_NAME, blobs) as registry,
          dead_port() as supernode):
        daemon = Daemon(os.path.join(root, "h"), [supernode], "--workers", "1",
                        "--no-back-source", "--proxy", "127.0.0.1:0", "--registry", registry.url)
        try:
            mirror = mirror_url(daemon)
            digest, data = list(registry.blobs.items())[1]
            status, headers, _ = call(f"{mirror}/v2/{REPO_NAME}/blobs/{digest}", login(mirror))
            # The registry's own answer, as it sent it: a redirect to its storage.
            assert status == 307, status
            status, _, body = call(headers["Location"])
            assert status == 200 and body == data
            stats = daemon.stats()["proxy"]
            assert stats["fallbacks"] == 1 and stats["blobs"] == 0, stats
            assert not os.listdir(os.path.join(daemon.data_dir, "proxy"))
        finally:
            daemon.close()


def test_a_client_that_leaves_mid_blob_leaves_no_link_and_no_harm(world):
    registry, (a, _) = world
    mirror = mirror_url(a)
    auth = login(mirror)
    digest, data = list(registry.blobs.items())[1]
    assert call(f"{mirror}/v2/{REPO_NAME}/blobs/{digest}", auth)[0] == 200  # cached now
    host, port = a.ready["proxy"].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /v2/{REPO_NAME}/blobs/{digest} HTTP/1.1\r\nHost: m\r\n"
                  f"Authorization: {auth['Authorization']}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
    spool = os.path.join(a.data_dir, "proxy")
    deadline = time.monotonic() + 10
    while os.listdir(spool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.listdir(spool)
    status, _, body = call(f"{mirror}/v2/{REPO_NAME}/blobs/{digest}", auth)
    assert status == 200 and body == data
