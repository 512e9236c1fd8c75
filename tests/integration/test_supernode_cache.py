"""The CDN cache over time: restart, revalidation, new versions, negative cache, secrets."""

from __future__ import annotations

import asyncio
import logging
import os

from engine.identity import task_id_for
from engine.messages import PieceResult
from engine.types import Digest
from tests.helpers import run
from tests.integration.origin import Origin
from tests.integration.snharness import MiB, FakeClock, blob, peers, sha, supernode, until


def test_restart_serves_the_cache_without_the_origin(tmp_path):
    data = blob(3 * MiB + 77)

    async def main():
        async with Origin() as origin:
            origin.add("f", data)
            async with supernode(tmp_path) as node, peers(node, "a") as (p,):
                first = await p.download(origin.url("f"))
            # A new supernode object on the same data dir.
            async with supernode(tmp_path) as node, peers(node, "b", "c") as ps:
                again = await asyncio.gather(*(q.download(origin.url("f")) for q in ps))
                assert node.service.origin.requests == 0
            assert origin.requests["f"] == 1
            for r in (first, *again):
                assert r.action == "done" and r.data == data and r.view.sha256 == sha(data)
            assert again[0].view.task_id == first.view.task_id
    run(main())


def test_restart_drops_a_fetch_cut_short(tmp_path):
    data = blob(3 * MiB)

    async def main():
        async with Origin() as origin:
            release = asyncio.Event()
            origin.add("f", data, release=release, hold_after=MiB + 10)
            async with supernode(tmp_path) as node, peers(node, "a") as (p,):
                view = await p.register(origin.url("f"))
                v = node.service.versions[view.task_id]
                await until(lambda: v.digests and v.digests[0] is not None)
            release.set()  # the old fetch was cancelled; this only unblocks the origin
            async with supernode(tmp_path) as node, peers(node, "b") as (p,):
                assert node.service.versions == {}  # the partial task was not kept
                result = await p.download(origin.url("f"))
            assert result.action == "done" and result.data == data
            assert origin.requests["f"] == 2
    run(main())


def test_revalidation_and_a_new_version_never_mixes(tmp_path):
    old, new = blob(3 * MiB), blob(3 * MiB)
    clock = FakeClock()

    async def main():
        async with Origin() as origin, supernode(
                tmp_path, clock, revalidate_after=60, heartbeat_timeout=1e6,
                assignment_timeout=1e6) as node:
            f = origin.add("f", old)
            url = origin.url("f")
            async with peers(node, "a", "b", "c", "d") as (a, b, c, d):
                first = await a.download(url)
                v1 = first.view.task_id
                # Stale: a conditional GET, 304, the same version.
                clock.advance(61)
                assert (await b.register(url)).task_id == v1
                assert origin.requests["f"] == 2
                assert f.headers_seen[-1]["If-None-Match"] == f.etag
                # Peer c starts on v1 and holds one assignment when the origin changes.
                await c.register(url)
                pending = (await c.schedule(v1, want=1)).assignments[0]
                f.data = new
                clock.advance(61)
                second = await d.download(url)
                v2 = second.view.task_id
                assert v2 != v1 and second.data == new and second.view.sha256 == sha(new)
                # c finishes v1 with v1's bytes, its pieces checked against v1.
                assert await c._fetch(v1, pending) == old[pending.piece * MiB:][:pending.size]
                c.held[str(v1), pending.piece] = old[pending.piece * MiB:][:pending.size]
                await c.schedule(v1, [_ok(pending)], want=0)
                rest = await c.resume(first.view)
                assert rest.action == "done" and rest.data == old
                # v1 goes once nobody is left in it; a seed offering it now
                # (a restarted daemon) is refused, or it would keep v1 alive.
                assert v1 in node.service.versions
                status, answer = await d.post("/api/v1/announce", {
                    "peer": {"peer_id": "e", "ip": "127.0.0.1", "port": 9},
                    "task_id": v1.hex, "sha256": sha(old)})
                assert status == 400 and "replaced" in answer["error"]
                for q in (a, b, c):
                    await q.post("/api/v1/leave", {"peer_id": q.name, "task_id": v1.hex})
                await until(lambda: v1 not in node.service.versions)
                assert not os.path.exists(node.store.task_path(v1))
                assert origin.requests["f"] == 3
    run(main())


def _ok(assignment) -> PieceResult:
    return PieceResult(assignment.piece, assignment.source, True, assignment.size)


def test_pinned_digest_is_never_revalidated(tmp_path):
    data = blob(MiB)
    clock = FakeClock()

    async def main():
        async with Origin() as origin, supernode(tmp_path, clock, revalidate_after=1) as node:
            hexdigest = sha(data)
            origin.add(f"sha256:{hexdigest}", data)
            url = f"http://127.0.0.1:{origin.port}/files/sha256:{hexdigest}"
            async with peers(node, "a", "b") as (a, b):
                await a.download(url, digest=Digest("sha256", hexdigest))
                clock.advance(1000)
                result = await b.download(url, digest=Digest("sha256", hexdigest))
            assert result.data == data and origin.requests[f"sha256:{hexdigest}"] == 1
    run(main())


def test_negative_cache(tmp_path):
    clock = FakeClock()

    async def main():
        async with Origin() as origin, supernode(tmp_path, clock, negative_ttl=10) as node:
            f = origin.add("f", blob(MiB), status=404)
            origin.add("private", blob(MiB), auth="Bearer good")
            async with peers(node, "a", "b", "c", "d", "e") as (a, b, c, d, e):
                assert (await a.download(origin.url("f"))).view.error_status == 404
                second = await b.download(origin.url("f"))
                assert second.action == "fail" and second.view.error_status == 404
                assert origin.requests["f"] == 1          # answered from the negative cache
                clock.advance(11)
                f.status = None
                third = await c.download(origin.url("f"))
                assert third.action == "done" and origin.requests["f"] == 2
                # A 401 belongs to the credentials that earned it.
                denied = await d.download(origin.url("private"), {"Authorization": "Bearer bad"})
                assert denied.action == "fail" and denied.view.error_status == 401
                allowed = await e.download(origin.url("private"), {"Authorization": "Bearer good"})
                assert allowed.action == "done"
                assert origin.requests["private"] == 2
    run(main())


def test_secrets_never_reach_disk_or_logs(tmp_path, caplog):
    data = blob(MiB + 1)
    secrets = ["SIGSECRET", "TOKENSECRET", "COOKIESECRET", "CREDSECRET"]
    caplog.set_level(logging.DEBUG)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            f = origin.add("f", data)
            signed = origin.url("f", "X-Amz-Signature=SIGSECRET&X-Amz-Credential=CREDSECRET")
            headers = {"Authorization": "Bearer TOKENSECRET", "Cookie": "s=COOKIESECRET"}
            async with peers(node, "a", "b") as (a, b):
                result = await a.download(signed, headers)
                plain = await b.download(origin.url("f"))
            assert result.data == data and plain.view.task_id == result.view.task_id
            assert result.view.task_id == task_id_for(origin.url("f"))
            assert origin.requests["f"] == 1
            assert f.headers_seen[0]["Authorization"] == "Bearer TOKENSECRET"
            for root, _dirs, files in os.walk(tmp_path):
                for name in files:
                    with open(os.path.join(root, name), "rb") as fh:
                        content = fh.read()
                    assert not any(s.encode() in content for s in secrets), name
            # Headers are dropped once the fetch is over.
            assert not node.service.cdn._fetches
    run(main())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not any(s in logged for s in secrets)


def test_the_cache_keeps_to_its_quota_least_recently_used_first(tmp_path):
    one, two, three = blob(3 * MiB), blob(3 * MiB + 5), blob(MiB)

    async def leave(peer, view):
        await peer.post("/api/v1/leave", {"peer_id": peer.name, "task_id": view.task_id.hex})

    async def main():
        async with Origin() as origin, supernode(tmp_path, cache_quota_mib=7) as node:
            for name, data in (("one", one), ("two", two), ("three", three)):
                origin.add(name, data)
            async with peers(node, "a", "b", "c") as (a, b, c):
                first = await a.download(origin.url("one"))
                second = await b.download(origin.url("two"))
                # 6 MiB: inside the quota; both stay although nobody is registered.
                await leave(a, first.view)
                await leave(b, second.view)
                assert (await a.download(origin.url("one"))).data == one   # one: recently used
                await leave(a, first.view)
                third = await c.download(origin.url("three"))
                # 7 MiB + 5 bytes: "two", the least recently registered, goes...
                await until(lambda: second.view.task_id not in node.service.versions)
                assert not os.path.exists(node.store.task_path(second.view.task_id))
                kept = node.service.versions
                assert first.view.task_id in kept and third.view.task_id in kept
                # "two" again (b stays registered): over the quota, "one" goes.
                again = await b.download(origin.url("two"))
                assert again.data == two                 # fetched from the origin again
                await until(lambda: first.view.task_id not in node.service.versions)
                # "one" again (a stays registered): over the quota, but every
                # file has a registered peer, so all stay...
                back = await a.download(origin.url("one"))
                await asyncio.sleep(0.3)                # several ticks
                assert {third.view.task_id, again.view.task_id,
                        back.view.task_id} <= set(node.service.versions)
                # ...until c leaves "three", the least recently registered.
                await leave(c, third.view)
                await until(lambda: third.view.task_id not in node.service.versions)
                assert node.service.counters["cache_evictions"] == 3
            assert origin.requests == {"one": 2, "two": 2, "three": 1}
    run(main())


def test_after_a_restart_the_version_confirmed_longest_ago_is_evicted_first(tmp_path):
    # The last use is not stored; the last validation stands in for it.
    # Both orders are run, so the store's scan order cannot make this pass.
    data = {"x": blob(3 * MiB), "y": blob(3 * MiB), "z": blob(2 * MiB)}

    async def main(root, older: str, newer: str):
        clock = FakeClock()
        settings = {"cache_quota_mib": 7, "heartbeat_timeout": 1e6, "assignment_timeout": 1e6}
        async with Origin() as origin:
            for name, body in data.items():
                origin.add(name, body)
            ids = {}
            async with supernode(root, clock, **settings) as node, peers(node, "a") as (a,):
                for name in (older, newer):
                    result = await a.download(origin.url(name))
                    assert result.data == data[name]
                    ids[name] = result.view.task_id
                    clock.advance(10)
            async with supernode(root, clock, **settings) as node, peers(node, "b") as (b,):
                assert set(node.service.versions) == set(ids.values())
                assert (await b.download(origin.url("z"))).data == data["z"]  # 8 MiB: over
                await until(lambda: ids[older] not in node.service.versions)
                node.service.tick()                     # more ticks: nothing else goes
                node.service.tick()
                assert ids[newer] in node.service.versions
                assert node.service.counters["cache_evictions"] == 1
            assert origin.requests == {older: 1, newer: 1, "z": 1}

    run(main(tmp_path / "xy", "x", "y"))
    run(main(tmp_path / "yx", "y", "x"))
