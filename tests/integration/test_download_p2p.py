"""The downloader in a real swarm: origin, supernode (with its CDN) and peers on loopback.

Every peer has its own PieceStore, UploadServer and Downloader, all in one
event loop. Every output is exported and checked by sha256 against the
origin's bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from engine.download import Downloader, DownloadRequest, rendezvous_order
from engine.errors import BadInput, OriginError
from engine.messages import PeerInfo
from engine.meta import TaskMeta
from engine.pieces import PieceLayout
from engine.store import PieceStore
from engine.types import PeerId
from engine.upload import UploadServer
from tests.helpers import dead_port, run
from tests.integration.dlharness import PIECE, Peer, fetch_and_check, swarm
from tests.integration.origin import Origin
from tests.integration.snharness import supernode, until

@pytest.mark.parametrize("parallel,disk_threads", [(1, 3), (4, 1)])
def test_four_peers_share_one_origin_download(tmp_path, parallel, disk_threads):
    """Why the strict ratio is asserted only with one fetch at a time per peer:
    the scheduler's rarest-first counts landed replicas only, not pieces in
    flight, so several peers asking at once are all sent to the pieces only
    the CDN holds. With four fetches per peer the CDN then serves about half
    of all bytes (measured 49-57 MiB of 96); with one, about a third.
    Both ways of running the sinks' threads (engine.download.sinks) are used."""
    data = os.urandom(24 * PIECE)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 4, parallel=parallel,
                      disk_threads=disk_threads) as peers:
            origin.add("big", data)
            url = origin.url("big")
            await asyncio.gather(*(fetch_and_check(p, url, data, tmp_path) for p in peers))
            return origin.requests["big"], [p.downloader.stats for p in peers]

    served, stats = run(main())
    assert served == 1
    from_peers = sum(s.bytes_from_peers for s in stats)
    from_cdn = sum(s.bytes_from_cdn for s in stats)
    assert from_peers + from_cdn == 4 * len(data)
    assert sum(s.bytes_from_origin for s in stats) == 0
    assert from_peers > from_cdn, (from_peers, from_cdn)  # P2P carried most of it


@pytest.mark.parametrize("threads", [0, 2, 4])
def test_disk_threads_other_than_one_or_three_are_refused(tmp_path, threads):
    with pytest.raises(BadInput, match="disk_threads"):
        Downloader(PieceStore(str(tmp_path)), ["127.0.0.1:1"],
                   PeerInfo(PeerId("p"), "127.0.0.1", 1), disk_threads=threads)


@pytest.mark.parametrize("receive", ["mmap", "pwrite"])
@pytest.mark.parametrize("size", [0, 1, PIECE, PIECE + 1])
def test_edge_sizes_then_a_second_download_needs_no_network(tmp_path, size, receive):
    data = os.urandom(size)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 2, receive=receive) as (a, b):
            origin.add("f", data)
            url = origin.url("f")
            await fetch_and_check(a, url, data, tmp_path)
            await fetch_and_check(b, url, data, tmp_path)  # from a or the CDN
            counters = dict(node.service.counters), origin.requests["f"]
            progress = []
            again = await a.downloader.download(DownloadRequest(url), progress.append)
            again.close()
            assert (dict(node.service.counters), origin.requests["f"]) == counters
            assert progress[-1].state == "complete" and progress[-1].done_bytes == size
            return counters[1], a.downloader.stats, b.downloader.stats

    served, sa, sb = run(main())
    assert served == 1 and sa.local_hits == 1
    assert sa.bytes_from_cdn == size and sa.bytes_from_origin == sb.bytes_from_origin == 0
    assert sb.bytes_from_cdn + sb.bytes_from_peers == size


@pytest.mark.parametrize("rot", ["silent", "write"])
def test_corrupt_pieces_from_a_peer_are_fetched_again_elsewhere(tmp_path, rot):
    data = os.urandom(8 * PIECE)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 2) as (liar, honest):
            origin.add("f", data)
            url = origin.url("f")
            await fetch_and_check(liar, url, data, tmp_path)
            # The liar's bitmap still claims every piece; its bytes are now wrong.
            task_id = DownloadRequest(url).task_id
            path = os.path.join(liar.store.task_path(task_id), "data")
            before = os.stat(path)
            with open(path, "r+b") as f:
                for i in range(8):
                    f.seek(i * PIECE + 100)
                    f.write(b"\xff" * 16)
            if rot == "silent":  # bit rot: no write the kernel saw, the mtime stands
                os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
            await fetch_and_check(honest, url, data, tmp_path)
            return honest.downloader.stats, liar.upload.stats

    stats, liar_served = run(main())
    if rot == "silent":  # only the receiver's sha256 can tell
        assert liar_served["pieces"] >= 1 and stats.pieces_corrupt >= 1
    else:  # a write after completion (an edited hard-linked output): never served
        assert liar_served["pieces"] == 0 and stats.pieces_corrupt == 0
    assert stats.bytes_from_peers + stats.bytes_from_cdn == 8 * PIECE


def test_an_origin_failure_reaches_the_peer_with_its_status(tmp_path):
    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 1) as (peer,):
            origin.add("gone", b"", status=404)
            with pytest.raises(OriginError) as err:
                await peer.downloader.download(DownloadRequest(origin.url("gone")))
            return err.value, origin.requests["gone"]

    error, served = run(main())
    assert error.status == 404 and served == 1


def test_failover_to_the_next_supernode_in_rendezvous_order(tmp_path):
    data = os.urandom(2 * PIECE + 1)

    async def main():
        with dead_port() as dead:
            async with Origin() as origin, supernode(tmp_path / "sn") as node:
                live = f"127.0.0.1:{node.port}"
                # A file name for which the dead supernode comes first.
                name = next(f"f{i}" for i in range(100) if rendezvous_order(
                    DownloadRequest(origin.url(f"f{i}")).task_id.hex, [dead, live])[0] == dead)
                origin.add(name, data)
                store = PieceStore(str(tmp_path / "peer"))
                async with UploadServer(store) as upload, Downloader(
                        store, [dead, live], PeerInfo(PeerId("p"), "127.0.0.1", upload.port)) as dl:
                    await fetch_and_check(Peer(store, upload, dl), origin.url(name), data, tmp_path)
                    return dl.stats

    stats = run(main())
    assert stats.supernode_failovers == 1 and stats.back_to_source == 0
    assert stats.bytes_from_cdn == 2 * PIECE + 1


def test_heartbeats_flow_while_seeding_and_stop_after_leaving(tmp_path):
    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 1, heartbeat_interval=0.02) as (peer,):
            beats = []
            real = node.service.heartbeat
            node.service.heartbeat = lambda hb: (beats.append(hb.peer_id), real(hb))[1]
            data = os.urandom(100)
            origin.add("f", data)
            await fetch_and_check(peer, origin.url("f"), data, tmp_path)
            await until(lambda: len(beats) >= 3)  # seeding: still beating after done
            await peer.downloader.leave()
            count = len(beats)
            idle = not peer.downloader.heartbeating
            return beats, count, idle, peer.downloader.peer.peer_id

    beats, count, idle, peer_id = run(main())
    assert set(beats) == {peer_id} and count >= 3 and idle


@pytest.mark.parametrize("saved", [True, False])
def test_verified_pieces_of_a_partial_task_are_reused(tmp_path, saved):
    """Reused whether or not the writer saved the meta: every published
    piece's digest is in the store's journal."""
    data = os.urandom(8 * PIECE)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 1) as (peer,):
            origin.add("f", data)
            url = origin.url("f")
            # What an interrupted download leaves: half the pieces, their digests saved.
            task = peer.store.create(TaskMeta.new(DownloadRequest(url).task_id, url,
                                                  PieceLayout(len(data), PIECE)))
            for i in range(0, 8, 2):
                piece = data[i * PIECE:(i + 1) * PIECE]
                task.write_piece(i, piece)
                task.commit_piece(i, hashlib.sha256(piece).hexdigest())
            if saved:
                task.save_meta()
            task.close()
            await fetch_and_check(peer, url, data, tmp_path)
            return peer.downloader.stats

    stats = run(main())
    assert stats.bytes_from_cdn + stats.bytes_from_peers == 4 * PIECE


def test_request_headers_reach_the_origin_through_the_supernode(tmp_path):
    data = os.urandom(PIECE + 10)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                swarm(tmp_path / "peers", node, 2) as (a, b):
            f = origin.add("private", data, auth="Bearer s3cret")
            url = origin.url("private")
            for peer in (a, b):
                await fetch_and_check(peer, url, data, tmp_path,
                                      headers={"Authorization": "Bearer s3cret"})
            stored = b"".join(_read(os.path.join(root, name))
                              for p in (a, b) for root, _, names in os.walk(p.store.root)
                              for name in names)
            return f.headers_seen, stored

    seen, stored = run(main())
    assert [h.get("Authorization") for h in seen] == ["Bearer s3cret"]  # one origin fetch
    assert b"s3cret" not in stored


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
