"""The supernode's CDN against a real origin: one fetch, resume, chunked, errors.

Every test runs the whole supernode in-process (API, CDN upload server) on
port 0, and downloads through the API with test peers that check each piece
and the whole file by sha256 against the origin's bytes.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.messages import PieceResult
from engine.types import Digest
from supernode.scheduler import invariants
from tests.helpers import run
from tests.integration.origin import Origin
from tests.integration.snharness import MiB, blob, peers, sha, supernode, until


def test_fifty_concurrent_registrations_make_one_origin_request(tmp_path):
    data = blob(5 * MiB + 123)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            release = asyncio.Event()
            origin.add("f", data, release=release)
            async with peers(node, *(f"p{i}" for i in range(50))) as ps:
                views = await asyncio.gather(*(p.register(origin.url("f")) for p in ps))
                assert len({v.task_id for v in views}) == 1
                assert all(v.state in ("pending", "running") for v in views)
                release.set()
                results = await asyncio.gather(*(p.download(origin.url("f")) for p in ps[:5]))
            assert origin.requests["f"] == 1
            for r in results:
                assert r.action == "done" and r.data == data
                assert r.view.sha256 == sha(data) and r.view.length == len(data)
            invariants.check(node.service.scheduler)
    run(main())


def test_a_first_registration_waits_for_the_first_piece_not_the_whole_file(tmp_path):
    from supernode.service import FIRST_PIECE_WAIT

    data = blob(4 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            release, stalled = asyncio.Event(), asyncio.Event()
            origin.add("f", data, release=release, hold_after=MiB + MiB // 2)
            origin.add("stalled", data, release=stalled)  # sends nothing until told
            async with peers(node, "first", "second") as (p, q):
                # The first piece is in when the view comes back: the first
                # schedule call gets it, with no wait_ms round trip before.
                view = await p.register(origin.url("f"))
                assert view.state == "running" and view.length == len(data)
                resp = await p.schedule(view.task_id, want=4)
                assert resp.action == "assign" and [a.piece for a in resp.assignments] == [0]
                # An origin that sends no body: the registration still answers
                # after FIRST_PIECE_WAIT, with nothing to fetch yet.
                loop = asyncio.get_running_loop()
                started = loop.time()
                try:
                    view = await q.register(origin.url("stalled"))
                    assert loop.time() - started >= FIRST_PIECE_WAIT * 0.9
                    resp = await q.schedule(view.task_id, want=4)
                    assert resp.action == "wait" and not resp.assignments
                finally:
                    release.set()
                    stalled.set()
    run(main())


async def _piece_zero_while_held(node, origin, p, data: bytes, **register):
    """Register ``p`` for "f" while the origin holds back everything past 1.5
    pieces, ask for 4 pieces and fetch the one there is (piece 0, checked).
    Returns the view, the schedule answer, piece 0's body and the event that
    lets the origin send the rest."""
    release = asyncio.Event()
    origin.add("f", data, release=release, hold_after=MiB + MiB // 2)
    view = await p.register(origin.url("f"), **register)
    version = node.service.versions[view.task_id]
    await until(lambda: version.digests and version.digests[0] is not None)
    resp = await p.schedule(view.task_id, want=4)
    assert resp.action == "assign" and [a.piece for a in resp.assignments] == [0]
    body = await p._fetch(view.task_id, resp.assignments[0])
    assert body == data[:MiB]
    return view, resp, body, release


def test_pieces_are_schedulable_while_the_origin_still_sends(tmp_path):
    data = blob(4 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            async with peers(node, "early") as (p,):
                view, resp, body, release = await _piece_zero_while_held(node, origin, p, data)
                assert resp.task.state == "running"
                assert resp.assignments[0].is_cdn
                assert resp.assignments[0].sha256 == sha(data[:MiB])
                release.set()
                first = resp.assignments[0]
                p.held[str(view.task_id), 0] = body
                await p.schedule(view.task_id, [PieceResult(0, first.source, True)], want=0)
                result = await p.download(origin.url("f"))
            assert result.data == data and origin.requests["f"] == 1
    run(main())


@pytest.mark.parametrize("behaviour,requests", [
    ({"drop_after": 1_500_000}, 2),                    # resumed with Range
    ({"drop_after": 1_500_000, "ranges": False}, 2),   # restarted from 0, prefix compared
    ({"chunked": True}, 1),                            # no Content-Length: spooled
    ({"chunked": True, "drop_after": 2_500_000}, 2),   # chunked, broken, resumed
    ({"drop_after": 700_000, "drops": 3}, 4),          # three breaks, within the budget
])
def test_origin_shapes_arrive_intact(tmp_path, behaviour, requests):
    data = blob(3 * MiB + 4321)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("f", data, **behaviour)
            async with peers(node, "a", "b") as ps:
                results = await asyncio.gather(*(p.download(origin.url("f")) for p in ps))
            for r in results:
                assert r.action == "done" and r.data == data
                assert r.view.sha256 == sha(data)
            assert origin.requests["f"] == requests
            version = node.service.versions[results[0].view.task_id]
            assert version.digests == [sha(data[i:i + MiB]) for i in range(0, len(data), MiB)]
    run(main())


def test_headers_and_redirects_reach_the_origin(tmp_path):
    data = blob(MiB // 2)
    headers = {"Authorization": "Bearer good", "Cookie": "s=1", "X-Custom": "yes"}

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            f = origin.add("f", data, auth="Bearer good")
            url = f"http://127.0.0.1:{origin.port}/redirect/f"
            async with peers(node, "a") as (p,):
                result = await p.download(url, headers)
            assert result.action == "done" and result.data == data
            seen = f.headers_seen[0]
            for name, value in headers.items():
                assert seen[name] == value
            assert seen["Accept-Encoding"] == "identity"
    run(main())


@pytest.mark.parametrize("behaviour,status,needle", [
    ({"status": 404}, 404, "404"),
    ({"status": 500}, 500, "500"),
    ({"auth": "Bearer right"}, 401, "401"),
    ({"status": 403}, 403, "403"),
    ({"short_by": 1000, "ranges": False}, None, "broke off at byte"),
])
def test_origin_errors_reach_the_peer(tmp_path, behaviour, status, needle):
    async def main():
        async with Origin() as origin, supernode(tmp_path, origin_retries=2) as node:
            origin.add("f", blob(MiB + 5), **behaviour)
            async with peers(node, "a", "b") as ps:
                results = await asyncio.gather(*(p.download(origin.url("f"), deadline=10)
                                                 for p in ps))
            for r in results:
                assert r.action == "fail"
                assert needle in r.message and needle in r.view.error
                assert r.view.state == "failed" and r.view.error_status == status
                assert "/files/f" in r.message  # says which URL (redacted) failed
            retried = 1 if status is not None and status < 500 else 3
            assert origin.requests["f"] == retried
            # The partial store entry is gone; nothing half-fetched is served.
            assert node.store.scan() == []
    run(main())


def test_unreachable_origin_fails_instead_of_hanging(tmp_path):
    async def main():
        async with Origin() as origin:
            url = origin.url("gone")  # the origin stops before anyone asks
        async with supernode(tmp_path, origin_retries=1) as node:
            async with peers(node, "a") as (p,):
                result = await p.download(url, deadline=10)
        assert result.action == "fail" and "cannot reach origin" in result.message
    run(main())


def test_expected_digest_is_enforced(tmp_path):
    data = blob(MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("f", data)
            async with peers(node, "a", "b") as (a, b):
                good = await a.download(origin.url("f"), digest=Digest("sha256", sha(data)))
                bad = await b.download(origin.url("f"), digest=Digest("sha256", "0" * 64))
            assert good.action == "done" and good.data == data
            assert bad.action == "fail" and "expected sha256:000" in bad.message
            assert good.view.task_id != bad.view.task_id
    run(main())


def test_results_reported_after_the_whole_file_failed_get_the_failure(tmp_path):
    data = blob(2 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            async with peers(node, "b") as (b,):
                view, resp, _, release = await _piece_zero_while_held(
                    node, origin, b, data, digest=Digest("sha256", "0" * 64))
                release.set()  # the rest arrives, and the whole file fails its digest
                version = node.service.versions[view.task_id]
                await until(lambda: version.state == "failed")
                result = PieceResult(0, resp.assignments[0].source, True, MiB)
                resp = await b.schedule(view.task_id, [result], want=4)
                assert resp.action == "fail" and "expected sha256:000" in resp.message
    run(main())


def test_empty_file(tmp_path):
    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("empty", b"")
            async with peers(node, "a") as (p,):
                result = await p.download(origin.url("empty"))
            assert result.action == "done" and result.data == b""
            assert result.view.sha256 == sha(b"") and result.view.piece_count == 0
    run(main())


def test_no_room_on_the_cdn_sends_peers_back_to_source(tmp_path):
    async def main():
        # A floor larger than any disk: the CDN cannot take the file.
        async with Origin() as origin, supernode(tmp_path, disk_floor_mib=1 << 40) as node:
            origin.add("f", blob(MiB))
            async with peers(node, "a") as (p,):
                result = await p.download(origin.url("f"))
            assert result.action == "back_to_source"
            assert "not enough disk space" in result.message
            assert result.view.state == "failed" and result.view.error_status is None
    run(main())


@pytest.mark.parametrize("behaviour,needle", [
    ({}, "validators differ"),                           # Range + If-Range: a full 200
    ({"ranges": False}, "validators differ"),
    ({"ranges": False, "validators": False}, "bytes differ"),
])
def test_content_changing_mid_fetch_is_never_mixed(tmp_path, behaviour, needle):
    first, second = blob(3 * MiB), blob(3 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("f", first, then=second, drop_after=MiB + MiB // 2, **behaviour)
            async with peers(node, "a") as (p,):
                result = await p.download(origin.url("f"))
            assert result.action == "fail" and needle in result.message
            assert "changed during the download" in result.message
            assert origin.requests["f"] == 2
    run(main())


def test_origin_without_validators_is_read_again_from_zero(tmp_path):
    data = blob(3 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            f = origin.add("f", data, validators=False, drop_after=MiB + 17)
            async with peers(node, "a") as (p,):
                result = await p.download(origin.url("f"))
            assert result.action == "done" and result.data == data
            assert [("Range" in h) for h in f.headers_seen] == [False, False]
    run(main())
