"""dfget against a loopback swarm: origin, supernode and four real dfdaemons.

Every output is checked by sha256 against the origin's bytes; the origin
must serve each file once however many hosts fetch it; and the daemons'
counters (the local API's ``stats``) must show the swarm doing the work.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request

import orjson
import pytest

from engine.cli.daemonclient import connect, converse
from engine.errors import BadInput, ClosedByUs, DaemonUnavailable, IntegrityError, OriginError
from engine.localapi import DownloadCommand
from tests.integration.swarm import (Daemon, Services, dfget, dfget_many, scratch_dir,
                                     sha256_file)

pytestmark = pytest.mark.integration
PIECE = 1 << 20
HOSTS = 4


@pytest.fixture(scope="module")
def swarm():
    daemons: list[Daemon] = []
    with scratch_dir("dfswarm-") as root:
        try:
            # On loopback the CDN is as fast as a peer; a few CDN upload slots make
            # it the scarce source it is in a real network, so the scheduler has to
            # use the peers (what the large-file test checks).
            with Services(root, cdn_upload_slots=4) as services:
                for i in range(HOSTS):
                    # One host with two workers: its upload port is shared (SO_REUSEPORT).
                    workers = "2" if i == 0 else "1"
                    daemons.append(Daemon(os.path.join(root, f"host{i}"),
                                          [services.supernode_url], "--workers", workers))
                yield services, daemons, root
                for d in daemons:
                    assert d.terminate() == 0, d.log()
        finally:
            for d in daemons:
                d.close()


def _fetch_everywhere(swarm, name: str, data: bytes, *args: str):
    services, daemons, root = swarm
    url = services.add(name, data)
    outs = [os.path.join(root, f"out-{name}-{i}") for i in range(len(daemons))]
    results = dfget_many([(d.data_dir, url, o) for d, o in zip(daemons, outs)], *args)
    want = hashlib.sha256(data).hexdigest()
    for r, out in zip(results, outs):
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == want
    assert services.origin.requests[name] == 1, "the origin must serve each file once"
    return results


@pytest.mark.parametrize("size", [0, 1, PIECE, PIECE + 1])
@pytest.mark.parametrize("way", ["link", "--copy"])
def test_every_host_gets_the_exact_bytes_and_the_origin_serves_once(swarm, size, way):
    # The default (a hard link to the cache) and the copy streamed while the
    # pieces arrive (engine.download.output) are two different write paths.
    _fetch_everywhere(swarm, f"edge-{size}-{way}", os.urandom(size),
                      *([way] if way.startswith("--") else []))


def _cached_inodes(daemon: Daemon) -> set[int]:
    return {os.stat(os.path.join(d, "data")).st_ino
            for d, _, files in os.walk(daemon.data_dir) if "data" in files and "meta" in files}


def test_the_output_is_a_link_to_the_cache_unless_a_copy_is_asked_for(swarm):
    services, daemons, root = swarm
    data = os.urandom(3 * PIECE + 11)
    want = hashlib.sha256(data).hexdigest()
    url = services.add("linked", data)
    linked, copied = os.path.join(root, "linked-out"), os.path.join(root, "copied-out")
    assert dfget(daemons[1].data_dir, url, linked).returncode == 0
    assert dfget(daemons[1].data_dir, url, copied, "--copy").returncode == 0
    assert sha256_file(linked) == sha256_file(copied) == want
    assert os.stat(linked).st_ino in _cached_inodes(daemons[1])
    assert os.stat(copied).st_ino not in _cached_inodes(daemons[1])
    assert os.stat(copied).st_nlink == 1

    # Edited in place, the linked output is the cache's inode: the daemon
    # must notice and fetch the file again rather than hand out the edit.
    with open(linked, "r+b") as f:
        f.seek(PIECE)
        f.write(b"user's edit")
    again = os.path.join(root, "linked-again")
    r = dfget(daemons[1].data_dir, url, again)
    assert r.returncode == 0, r.stderr
    assert sha256_file(again) == want
    assert os.stat(again).st_ino != os.stat(linked).st_ino
    assert services.origin.requests["linked"] == 1


def test_an_output_on_another_filesystem_is_a_copy_and_link_refuses_it(swarm):
    import tempfile

    services, daemons, root = swarm
    data = os.urandom(2 * PIECE + 5)
    url = services.add("elsewhere", data)
    # /dev/shm is a tmpfs: another filesystem than the daemons' store.
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        assert os.stat(other).st_dev != os.stat(daemons[2].data_dir).st_dev
        out = os.path.join(other, "out")
        r = dfget(daemons[2].data_dir, url, out)
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
        assert os.stat(out).st_nlink == 1
        forced = os.path.join(other, "forced")
        r = dfget(daemons[2].data_dir, url, forced, "--link")
        assert r.returncode == 5, r.stderr
        assert "cross-device" in r.stderr and not os.path.exists(forced)
        assert sorted(os.listdir(other)) == ["out"]  # no temporary left behind


def test_link_and_copy_exclude_each_other(tmp_path):
    r = dfget(str(tmp_path / "d"), "http://127.0.0.1:9/x", str(tmp_path / "o"),
              "--link", "--copy", "--no-autostart")
    assert r.returncode == BadInput.exit_code, r.stderr
    assert "not allowed with" in r.stderr and not os.path.exists(tmp_path / "o")


def test_a_large_file_comes_mostly_from_other_peers(swarm):
    _, daemons, _ = swarm
    before = [d.stats()["download"] for d in daemons]
    results = _fetch_everywhere(swarm, "large", os.urandom(200 * PIECE + 12345), "--json")
    after = [d.stats()["download"] for d in daemons]
    from_peers = sum(a["pieces_from_peers"] - b["pieces_from_peers"]
                     for a, b in zip(after, before))
    from_cdn = sum(a["pieces_from_cdn"] - b["pieces_from_cdn"] for a, b in zip(after, before))
    assert from_peers + from_cdn >= HOSTS * 201
    assert from_peers > from_cdn, (from_peers, from_cdn)
    # The done events agree with the counters, and show a progress stream came first.
    for r in results:
        events = [orjson.loads(line) for line in r.stdout.splitlines()]
        assert events[0]["event"] == "accepted" and events[-1]["event"] == "done"
        assert any(e["event"] == "progress" for e in events)
        done = events[-1]
        assert done["from_peers"] + done["from_cdn"] + done["from_origin"] == done["length"]


@pytest.mark.parametrize("progress", [True, False])
def test_progress_events_come_only_to_a_client_that_asks(swarm, progress):
    """A client that shows no progress says so, and the daemon sends none;
    the done event still carries the byte counts. --limit keeps the
    download going for several progress intervals."""
    services, daemons, root = swarm
    data = os.urandom(3 * PIECE + 5)
    url = services.add(f"progress-{progress}", data)
    out = os.path.join(root, f"progress-{progress}")
    cmd = DownloadCommand(url, out, limit=6 << 20, progress=progress)
    sock = connect(daemons[1].socket)
    assert sock is not None
    events = list(converse(sock, cmd.to_wire()))
    assert events[-1]["event"] == "done", events[-1]
    assert events[-1]["from_peers"] + events[-1]["from_cdn"] + events[-1]["from_origin"] \
        == len(data)
    assert any(e["event"] == "progress" for e in events) is progress
    assert sha256_file(out) == hashlib.sha256(data).hexdigest()


def test_concurrent_requests_on_one_host_join_one_download(swarm):
    services, daemons, root = swarm
    data = os.urandom(3 * PIECE + 7)
    url = services.add("joined", data)
    host = daemons[0]
    outs = [os.path.join(root, f"joined-{i}") for i in range(3)]
    results = dfget_many([(host.data_dir, url, o) for o in outs])
    for r, out in zip(results, outs):
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
    assert services.origin.requests["joined"] == 1
    # Again: a local hit, nothing new from anywhere.
    again = os.path.join(root, "joined-again")
    r = dfget(host.data_dir, url, again, "--json")
    done = orjson.loads(r.stdout.splitlines()[-1])
    assert r.returncode == 0 and sha256_file(again) == hashlib.sha256(data).hexdigest()
    assert done["from_peers"] == done["from_cdn"] == done["from_origin"] == 0


def _members(services) -> int:
    """Peers (and CDNs) taking part in tasks at the supernode, from /metrics."""
    with urllib.request.urlopen(services.supernode_url + "/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("damselfly_supernode_scheduler_members "):
                return int(line.split()[1])
    raise AssertionError("no member count in /metrics")


def test_a_limited_download_keeps_its_rate_and_the_host_keeps_serving(swarm):
    """``--limit`` paces that one download from its first byte (a lower bound
    on the time, not a speed test), and the host still serves the task
    afterwards: the supernode still counts it in (CDN and host joined)."""
    services, daemons, root = swarm
    data = os.urandom(3 * PIECE)
    url = services.add("limited", data)
    out = os.path.join(root, "limited-out")
    members = _members(services)
    started = time.monotonic()
    r = dfget(daemons[1].data_dir, url, out, "--limit", "2M")
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert sha256_file(out) == hashlib.sha256(data).hexdigest()
    assert elapsed >= len(data) / (2 * PIECE), elapsed
    assert _members(services) == members + 2


def test_non_ascii_output_path_relative_to_the_cwd(swarm):
    services, daemons, root = swarm
    data = os.urandom(PIECE + 3)
    url = services.add("unicode", data)
    folder = os.path.join(root, "données ☃")
    os.makedirs(folder)
    r = dfget(daemons[1].data_dir, url, "файл ü.bin", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert sha256_file(os.path.join(folder, "файл ü.bin")) == hashlib.sha256(data).hexdigest()
    assert os.listdir(folder) == ["файл ü.bin"]  # no temporary left behind


def test_a_digest_mismatch_leaves_nothing_at_the_output(swarm):
    services, daemons, root = swarm
    data = os.urandom(2 * PIECE)
    url = services.add("digest", data)
    out = os.path.join(root, "digest-out")
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    r = dfget(daemons[2].data_dir, url, out, "--digest", wrong)
    # Whether the CDN or the peer finds the mismatch, it is exit 8: the
    # supernode's task view names the error kind it failed with.
    assert r.returncode == IntegrityError.exit_code, r.stderr
    assert "sha256" in r.stderr and r.stderr.count("\n") == 1
    assert not [n for n in os.listdir(root) if n.startswith(("digest-out", ".digest-out"))]
    # The right digest (md5 this time) works, through the same daemon.
    r = dfget(daemons[2].data_dir, url, out, "--digest", "md5:" + hashlib.md5(data).hexdigest())
    assert r.returncode == 0, r.stderr
    assert sha256_file(out) == hashlib.sha256(data).hexdigest()


def test_an_origin_error_has_its_exit_code(swarm):
    services, daemons, root = swarm
    url = services.add("gone", b"", status=404)
    r = dfget(daemons[3].data_dir, url, os.path.join(root, "gone-out"))
    assert r.returncode == OriginError.exit_code, r.stderr
    assert not os.path.exists(os.path.join(root, "gone-out"))


def test_a_timeout_has_its_exit_code_and_leaves_nothing(swarm):
    services, daemons, root = swarm
    url = services.add("slow", os.urandom(PIECE), delay=5)  # the origin stalls past 1 s
    out = os.path.join(root, "slow-out")
    r = dfget(daemons[3].data_dir, url, out, "--timeout", "1s")
    assert r.returncode == ClosedByUs.exit_code, r.stderr
    assert "longer than" in r.stderr
    assert not [n for n in os.listdir(root) if n.startswith(("slow-out", ".slow-out"))]


@pytest.mark.parametrize("args", [
    ["ftp://example.com/x", "-o", "out"],
    ["http://example.com/x", "-o", "/no/such/dir/out"],
    ["http://example.com/x", "-o", "out", "--digest", "sha256:abc"],
    ["http://example.com/x", "-o", "out", "--header", "no colon"],
    ["http://example.com/x", "-u", "http://example.com/y", "-o", "out"],
])
def test_bad_input_is_exit_2_before_any_daemon_is_involved(tmp_path, args):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "engine.cli.dfget", "--data-dir",
                        str(tmp_path / "d"), "--no-autostart", *args], cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == BadInput.exit_code, r.stderr
    assert not os.path.exists(tmp_path / "d" / "dfdaemon.sock")


def test_no_daemon_and_no_autostart_is_exit_9(tmp_path):
    r = dfget(str(tmp_path / "d"), "http://127.0.0.1:9/x", str(tmp_path / "o"),
              "--no-autostart")
    assert r.returncode == DaemonUnavailable.exit_code, r.stderr
