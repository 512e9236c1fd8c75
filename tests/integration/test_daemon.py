"""dfdaemon as a process: supervision, faults, auto-start, idle exit, shutdown, GC,
seeding again after a restart."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
import urllib.request

import orjson
import pytest

from engine.errors import ConfigError, IntegrityError, SupernodeError
from tests.helpers import dead_port
from tests.integration.swarm import (READY_TIMEOUT, REPO, Daemon, Services, dfget,
                                     dfget_cmd, scratch_dir, sha256_file, wait_pid_gone)

pytestmark = pytest.mark.integration
PIECE = 1 << 20


@pytest.fixture
def root():
    with scratch_dir("dfd-") as path:
        yield path


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    try:
        yield started
    finally:
        for d in started:
            d.close()


def test_a_dead_supernode_means_back_to_source_or_a_clear_error_and_digests_hold(root, daemons):
    data = os.urandom(2 * PIECE + 1)
    with Services(root, with_supernode=False) as services, dead_port() as sn:
        url = services.add("f", data)
        daemons.append(Daemon(os.path.join(root, "h"), [sn], "--workers", "1"))
        host = daemons[0]
        out = os.path.join(root, "out")
        r = dfget(host.data_dir, url, out, "--no-back-source")
        assert r.returncode == SupernodeError.exit_code, r.stderr
        assert "back-to-source is disabled" in r.stderr and not os.path.exists(out)
        wrong = "sha256:" + hashlib.sha256(b"not it").hexdigest()
        r = dfget(host.data_dir, url, out, "--digest", wrong)
        assert r.returncode == IntegrityError.exit_code, r.stderr
        assert not [n for n in os.listdir(root) if n.startswith(("out", ".out"))]
        r = dfget(host.data_dir, url, out)
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
        assert host.stats()["download"]["back_to_source"] == 2


def test_a_worker_killed_mid_download_is_replaced_and_the_download_completes(root, daemons):
    size = 16 * PIECE + 5
    data = os.urandom(size)
    with Services(root) as services:
        url = services.add("slow", data)
        # 4 MiB/s for the host: about four seconds, time enough to kill the worker.
        daemons.append(Daemon(os.path.join(root, "h"), [services.supernode_url],
                              "--workers", "1", "--download-limit", "4M"))
        host = daemons[0]
        (worker,) = host.stats()["workers"]
        out = os.path.join(root, "out")
        proc = subprocess.Popen(dfget_cmd(host.data_dir, url, out, "--json"), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            events = []
            for line in proc.stdout:  # readiness: the first piece has landed
                events.append(orjson.loads(line))
                if events[-1].get("done_bytes", 0) >= PIECE:
                    os.kill(worker, signal.SIGKILL)
                    break
            rest, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode()
        done = orjson.loads(rest.splitlines()[-1])
        assert done["event"] == "done" and done["length"] == size
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
        stats = host.stats()
        assert stats["worker_restarts"] == 1 and worker not in stats["workers"]
        assert stats["disk_reserved"] == 0
        assert services.origin.requests["slow"] == 1


def test_dfget_starts_a_daemon_that_leaves_when_idle(root):
    data = os.urandom(PIECE + 17)
    data_dir = os.path.join(root, "auto")
    with Services(root) as services:
        url = services.add("auto", data)
        out = os.path.join(root, "out")
        r = dfget(data_dir, url, out, "--supernode", services.supernode_url,
                  "--daemon-idle-exit", "2s")
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
        with open(os.path.join(data_dir, "dfdaemon.lock")) as f:
            pid = int(f.read())
        from tests.integration.swarm import connect, converse
        (stats,) = list(converse(connect(os.path.join(data_dir, "dfdaemon.sock")),
                                 {"op": "stats"}))
        try:
            assert stats["pid"] == pid
            for p in [pid, *stats["workers"]]:  # the daemon and every worker
                assert wait_pid_gone(p, READY_TIMEOUT), f"pid {p} still runs"
        finally:
            for p in [pid, *stats["workers"]]:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        assert not os.path.exists(os.path.join(data_dir, "dfdaemon.sock"))


def test_a_daemon_that_serves_peers_is_not_idle(root, daemons):
    from engine.identity import TaskIdentity
    data = os.urandom(PIECE + 17)
    with Services(root) as services:
        url = services.add("served", data)
        daemons.append(Daemon(os.path.join(root, "h"), [services.supernode_url],
                              "--idle-exit", "2s"))
        host = daemons[0]
        out = os.path.join(root, "out")
        r = dfget(host.data_dir, url, out, "--supernode", services.supernode_url)
        assert r.returncode == 0, r.stderr
        piece = (f"http://127.0.0.1:{host.port}/pieces/"
                 f"{TaskIdentity.of(url).task_id.hex}/0")
        until = time.monotonic() + 5                # two and a half idle periods
        while time.monotonic() < until:
            with urllib.request.urlopen(piece, timeout=10) as resp:
                assert resp.read() == data[:PIECE]
            time.sleep(0.5)
        assert host.proc.poll() is None, "exited while peers fetched from it"
        assert host.proc.wait(timeout=20) == 0      # no uploads any more: it leaves
        assert "no requests and no uploads" in host.log()


def test_sigterm_stops_the_daemon_and_every_worker(root, daemons):
    with dead_port() as sn:
        daemons.append(Daemon(os.path.join(root, "h"), [sn], "--workers", "3",
                              "--ready-file", os.path.join(root, "ready.json")))
        host = daemons[0]
        with open(os.path.join(root, "ready.json"), "rb") as f:
            ready = orjson.loads(f.read())
        assert ready["pid"] == host.proc.pid and ready["upload_port"] == host.port
        workers = host.stats()["workers"]
        assert len(workers) == 3
        assert host.terminate() == 0
        for pid in workers:
            assert wait_pid_gone(pid, 30)
        with pytest.raises(ProcessLookupError):
            os.killpg(host.proc.pid, 0)  # nothing left in the process group
        assert not os.path.exists(host.socket)
        assert not os.path.exists(os.path.join(root, "ready.json"))


def test_one_daemon_per_data_dir(root, daemons):
    with dead_port() as sn:
        daemons.append(Daemon(os.path.join(root, "h"), [sn], "--workers", "1"))
        with pytest.raises(RuntimeError, match="already uses"):
            daemons.append(Daemon(os.path.join(root, "h"), [sn], "--workers", "1"))
        assert daemons[0].proc.poll() is None


def test_bad_config_is_exit_3(root):
    r = subprocess.run([*dfget_cmd(root, "x", "y")[:2], "engine.cli.dfdaemon", "--data-dir",
                        root, "--upload-limit", "lots"], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == ConfigError.exit_code and "upload_limit" in r.stderr


def test_finished_tasks_expire_after_the_ttl(root, daemons):
    data = os.urandom(PIECE)
    with Services(root) as services:
        url = services.add("ttl", data)
        daemons.append(Daemon(os.path.join(root, "h"), [services.supernode_url],
                              "--workers", "1", "--task-ttl", "1s"))
        host = daemons[0]
        r = dfget(host.data_dir, url, os.path.join(root, "out"), "--json")
        assert r.returncode == 0, r.stderr
        task_id = orjson.loads(r.stdout.splitlines()[-1])["task_id"]
        task_dir = os.path.join(host.data_dir, "tasks", task_id)
        # The GC is a timer in the daemon; here a bounded wait for its effect.
        deadline = time.monotonic() + 20
        while os.path.exists(task_dir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(task_dir)
        assert host.stats()["tasks_cached"] == 0
        # Gone from the cache, the file is downloaded again (from the CDN's cache).
        r = dfget(host.data_dir, url, os.path.join(root, "out2"))
        assert r.returncode == 0, r.stderr
        assert sha256_file(os.path.join(root, "out2")) == hashlib.sha256(data).hexdigest()


def test_a_restarted_daemon_seeds_what_its_store_holds(root, daemons):
    data = os.urandom(3 * PIECE + 5)
    with Services(root) as services:
        url = services.add("kept", data)
        first = Daemon(os.path.join(root, "a"), [services.supernode_url])
        daemons.append(first)
        r = dfget(first.data_dir, url, os.path.join(root, "out-a"))
        assert r.returncode == 0, r.stderr
        assert first.terminate() == 0                  # it leaves the task as it stops
        again = Daemon(first.data_dir, [services.supernode_url])
        daemons.append(again)
        deadline = time.monotonic() + 20
        while "announced 1 of 1 cached task(s)" not in again.log():
            assert time.monotonic() < deadline, again.log()
            time.sleep(0.05)
        other = Daemon(os.path.join(root, "b"), [services.supernode_url])
        daemons.append(other)
        out = os.path.join(root, "out-b")
        r = dfget(other.data_dir, url, out)
        assert r.returncode == 0, r.stderr
        assert sha256_file(out) == hashlib.sha256(data).hexdigest()
        # Nobody had asked the restarted daemon for the file, yet it served
        # most of it: a request is spread over sources (a peer first, then
        # the CDN for the second piece), so 3 of the 4 pieces; 0 without
        # the announce.
        assert again.stats()["upload"]["pieces"] >= 3
