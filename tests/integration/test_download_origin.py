"""The downloader without a swarm: back-to-source, local hits, joining, failures.

A real aiohttp origin on loopback; the supernode list points at a bound
socket that never listens (connection refused at once, no timeouts).
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from engine.download import Downloader, DownloadRequest
from engine.errors import ClosedByUs, IntegrityError, OriginError, SupernodeError
from engine.messages import PeerInfo
from engine.store import PieceStore
from engine.types import Digest, PeerId
from tests.helpers import dead_port, run
from tests.integration.dlharness import PIECE, check_task
from tests.integration.origin import Origin
from tests.integration.snharness import until

def _peer(name: str = "peer-a") -> PeerInfo:
    return PeerInfo(PeerId(name), "127.0.0.1", 65000)


@pytest.mark.parametrize("size", [0, 1, PIECE, PIECE + 1, 3 * PIECE + 5])
def test_back_to_source_when_the_supernode_is_down(tmp_path, size):
    data = os.urandom(size)
    store = PieceStore(str(tmp_path / "store"))

    async def main():
        with dead_port() as sn:
            async with Origin() as origin, Downloader(store, [sn], _peer()) as dl:
                origin.add("f", data)
                progress = []
                task = await dl.download(DownloadRequest(origin.url("f")), progress.append)
                try:
                    check_task(task, data, tmp_path)
                finally:
                    task.close()
                # The same file again: from the store, nothing on the network.
                again = await dl.download(DownloadRequest(origin.url("f")))
                again.close()
                return origin.requests["f"], dl.stats, progress

    served, stats, progress = run(main())
    assert served == 1
    assert stats.back_to_source == 1 and stats.local_hits == 1
    assert stats.bytes_from_origin == size and stats.bytes_from_peers == stats.bytes_from_cdn == 0
    assert progress[-1].state == "complete" and progress[-1].done_bytes == size
    assert progress[-1].from_origin == size


def test_a_download_ends_before_its_sync_and_is_synced_later_or_at_close(tmp_path):
    data = os.urandom(PIECE + 3)
    other = os.urandom(5)
    store = PieceStore(str(tmp_path / "store"))

    def synced(task_id) -> bool:
        task = PieceStore(store.root).open(task_id)
        try:
            assert task.complete
            return task.meta.synced
        finally:
            task.close()

    async def main():
        with dead_port() as sn:
            async with Origin() as origin:
                origin.add("f", data)
                origin.add("g", other)
                dl = Downloader(store, [sn], _peer())
                dl.syncs.delay = 0.2
                try:
                    task = await dl.download(DownloadRequest(origin.url("f")))
                    task.close()
                    seen = [synced(task.task_id)]      # complete, served, not waited for
                    await until(lambda: synced(task.task_id))
                    dl.syncs.delay = 60.0
                    later = await dl.download(DownloadRequest(origin.url("g")))
                    later.close()
                    seen.append(synced(later.task_id))
                finally:
                    await dl.aclose()                  # does what was still due
                seen.append(synced(later.task_id))
                return seen

    assert run(main()) == [False, False, True]


def test_no_back_source_means_a_supernode_error(tmp_path):
    store = PieceStore(str(tmp_path))

    async def main():
        with dead_port() as sn1, dead_port() as sn2:
            async with Origin() as origin, Downloader(store, [sn1, sn2], _peer()) as dl:
                origin.add("f", b"x" * 10)
                with pytest.raises(SupernodeError, match="back-to-source is disabled") as err:
                    await dl.download(DownloadRequest(origin.url("f"), back_source=False))
                return origin.requests["f"], str(err.value), sn1, sn2

    served, message, sn1, sn2 = run(main())
    assert served == 0 and sn1 in message and sn2 in message


def test_chunked_origin_headers_and_redirects(tmp_path):
    data = os.urandom(2 * PIECE + 7)
    store = PieceStore(str(tmp_path / "store"))

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            f = origin.add("c", data, chunked=True, auth="Bearer s3cret")
            url = f"http://127.0.0.1:{origin.port}/redirect/c"
            task = await dl.download(DownloadRequest(url, {"Authorization": "Bearer s3cret"}))
            try:
                check_task(task, data, tmp_path)
                assert task.layout.count == 3
            finally:
                task.close()
            return f.headers_seen

    seen = run(main())
    assert seen[-1]["Authorization"] == "Bearer s3cret"
    assert not [n for n in os.listdir(store.root) if n.startswith(".spool")]


@pytest.mark.parametrize("status", [401, 404, 500])
def test_origin_errors_keep_their_status(tmp_path, status):
    store = PieceStore(str(tmp_path))

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            origin.add("f", b"abc", status=status)
            with pytest.raises(OriginError) as err:
                await dl.download(DownloadRequest(origin.url("f")))
            return err.value

    assert run(main()).status == status


@pytest.mark.parametrize("behaviour", [{"short_by": 1000}, {"drop_after": 1000}])
def test_an_origin_that_breaks_its_promise_is_an_origin_error(tmp_path, behaviour):
    store = PieceStore(str(tmp_path))

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            origin.add("f", os.urandom(PIECE + 5000), **behaviour)
            with pytest.raises(OriginError):
                await dl.download(DownloadRequest(origin.url("f")))

    run(main())


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_expected_digest_is_checked_and_a_mismatch_is_removed(tmp_path, algorithm):
    data = os.urandom(PIECE + 3)
    store = PieceStore(str(tmp_path / "store"))
    good = Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    bad = Digest(algorithm, hashlib.new(algorithm, b"other").hexdigest())

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            origin.add("f", data)
            task = await dl.download(DownloadRequest(origin.url("f"), digest=good))
            check_task(task, data, tmp_path)
            task.close()
            with pytest.raises(IntegrityError):
                await dl.download(DownloadRequest(origin.url("f"), digest=bad))
            return DownloadRequest(origin.url("f"), digest=bad).task_id

    bad_id = run(main())
    assert not os.path.exists(store.task_path(bad_id))


def test_concurrent_requests_join_one_download(tmp_path):
    data = os.urandom(2 * PIECE)
    store = PieceStore(str(tmp_path / "store"))

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            f = origin.add("f", data, release=asyncio.Event())
            first = asyncio.create_task(dl.download(DownloadRequest(origin.url("f"))))
            second = asyncio.create_task(dl.download(DownloadRequest(origin.url("f"))))
            while origin.requests["f"] == 0 or dl.stats.joined == 0:
                await asyncio.sleep(0)  # readiness: both callers are in
            f.release.set()
            tasks = await asyncio.gather(first, second)
            try:
                assert tasks[0] is not tasks[1]
                for task in tasks:
                    check_task(task, data, tmp_path)
            finally:
                for task in tasks:
                    task.close()
            return origin.requests["f"], dl.stats

    served, stats = run(main())
    assert served == 1 and stats.joined == 1 and stats.completed == 1


def test_timeout_is_closed_by_us_and_the_download_is_dropped(tmp_path):
    store = PieceStore(str(tmp_path))

    async def main():
        async with Origin() as origin, Downloader(store, [], _peer()) as dl:
            f = origin.add("f", b"x" * 100, release=asyncio.Event())
            with pytest.raises(ClosedByUs):
                await dl.download(DownloadRequest(origin.url("f"), timeout=0.2))
            f.release.set()  # the origin's handler may finish (into a closed connection)
            return dl.stats

    assert run(main()).failed == 1


@pytest.mark.parametrize("copy", [False, True])
def test_the_space_precheck_counts_a_copied_output_and_not_a_linked_one(tmp_path, copy):
    from engine.diskspace import DiskBudget, free_bytes
    from engine.download.output import OutputFile
    from engine.errors import NotEnoughSpace

    size = 32 * PIECE
    data = os.urandom(size)
    root = tmp_path / "store"
    root.mkdir()
    # Room for the task and half its size again: enough for a hard-linked
    # output, not for a copy (the floor leaves 1.5 x size of the free space).
    budget = DiskBudget(floor_bytes=free_bytes(str(root)) - size * 3 // 2)
    store = PieceStore(str(root), budget=budget)
    out = str(tmp_path / "out")

    async def main():
        with dead_port() as sn:
            async with Origin() as origin, Downloader(store, [sn], _peer()) as dl:
                origin.add("f", data)
                output = OutputFile(out) if copy else None
                task = await dl.download(DownloadRequest(origin.url("f")), output=output)
                try:
                    task.export(out, link=True)
                finally:
                    task.close()

    if copy:
        with pytest.raises(NotEnoughSpace):
            run(main())
        assert not os.path.exists(out)
    else:
        run(main())
        with open(out, "rb") as f:
            assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert budget.reserved == 0
