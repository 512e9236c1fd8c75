"""A restarted peer offers the complete tasks in its store (Downloader.announce_cached),
and a seed offers them again to a supernode that restarted.

A complete task is answered from the local store without a word to the
supernode, so after a restart nobody knew the host held it and it never
served it again. Every output is checked by sha256 against the origin.
"""

from __future__ import annotations

import hashlib
import os

import aiohttp

from engine.download import Downloader, DownloadRequest
from engine.messages import PeerInfo
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from engine.upload import UploadServer
from tests.helpers import dead_port, run
from tests.integration.dlharness import PIECE, fetch_and_check, swarm
from tests.integration.origin import Origin
from tests.integration.snharness import supernode, until


def test_a_restarted_peer_offers_its_store_and_serves_it(tmp_path):
    data = os.urandom(8 * PIECE + 123)

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node:
            origin.add("f", data)
            url = origin.url("f")
            store = PieceStore(str(tmp_path / "a"))
            async with UploadServer(store) as upload:
                me = PeerInfo(PeerId("peer-a"), "127.0.0.1", upload.port)
                async with Downloader(store, [f"127.0.0.1:{node.port}"], me) as first:
                    (await first.download(DownloadRequest(url))).close()
                # Closing left the task, as a daemon that stops does. A new
                # Downloader on the same store is the restarted daemon; the
                # dead supernode first in its list is skipped.
                with dead_port() as dead:
                    async with Downloader(store, [dead, f"127.0.0.1:{node.port}"],
                                          me) as again:
                        offered = await again.announce_cached()
                        offered_twice = await again.announce_cached()
                        before = upload.stats["pieces"]
                        async with swarm(tmp_path / "b", node, 1, parallel=1) as (b,):
                            await fetch_and_check(b, url, data, tmp_path)
                            return (offered, offered_twice, upload.stats["pieces"] - before,
                                    b.downloader.stats)

    offered, offered_twice, served, stats = run(main())
    assert (offered, offered_twice) == (1, 0)
    # The CDN sends only pieces no peer holds: every piece came from the
    # restarted peer (without the announce, all of them came from the CDN).
    assert served == 9
    assert stats.bytes_from_peers == len(data) and stats.bytes_from_cdn == 0


def test_a_store_the_supernode_does_not_know_is_kept_local(tmp_path):
    data = os.urandom(2 * PIECE)

    async def main():
        async with Origin() as origin:
            origin.add("f", data)
            store = PieceStore(str(tmp_path / "a"))
            async with supernode(tmp_path / "sn1") as node:
                async with Downloader(store, [f"127.0.0.1:{node.port}"],
                                      PeerInfo(PeerId("peer-a"), "127.0.0.1", 9)) as first:
                    (await first.download(DownloadRequest(origin.url("f")))).close()
            # Another supernode, with another cache: it never saw this version.
            async with supernode(tmp_path / "sn2") as other:
                async with Downloader(store, [f"127.0.0.1:{other.port}"],
                                      PeerInfo(PeerId("peer-a"), "127.0.0.1", 9)) as again:
                    return await again.announce_cached(), again.heartbeating

    assert run(main()) == (0, False)


def test_the_supernode_takes_only_a_copy_of_what_it_holds_whole(tmp_path):
    data = os.urandom(3 * PIECE)
    digest = hashlib.sha256(data).hexdigest()

    async def main():
        async with Origin() as origin, supernode(tmp_path / "sn") as node, \
                aiohttp.ClientSession() as s:
            origin.add("f", data)
            peer = {"peer_id": "p1", "ip": "127.0.0.1", "port": 9000}
            async with s.post(node.url + "/api/v1/register",
                              json={"url": origin.url("f"), "peer": peer}) as resp:
                task_id = (await resp.json())["task_id"]
            await until(lambda: node.service.task_view(TaskId(task_id)).state == "complete")
            async with s.get(node.url + f"/api/v1/tasks/{task_id}") as resp:
                view = await resp.json()
            answers = []
            for name, sha in (("p2", "0" * 64), ("cdn", digest), ("p2", digest)):
                body = {"peer": {**peer, "peer_id": name}, "task_id": task_id, "sha256": sha}
                async with s.post(node.url + "/api/v1/announce", json=body) as resp:
                    answers.append((resp.status, await resp.json()))
            return view, answers

    view, answers = run(main())
    assert view["state"] == "complete" and view["sha256"] == digest
    (s1, e1), (s2, e2), (s3, v3) = answers
    assert s1 == 400 and "another sha256" in e1["error"]
    assert s2 == 400 and "CDN" in e2["error"]
    assert s3 == 200 and v3["sha256"] == digest


def test_a_seed_offers_its_tasks_again_when_the_supernode_restarts(tmp_path):
    data = os.urandom(4 * PIECE)

    async def main():
        async with Origin() as origin:
            origin.add("f", data)
            url = origin.url("f")
            store = PieceStore(str(tmp_path / "a"))
            async with UploadServer(store) as upload:
                me = PeerInfo(PeerId("peer-a"), "127.0.0.1", upload.port)
                async with supernode(tmp_path / "sn") as node:
                    port = node.port
                    seed = Downloader(store, [f"127.0.0.1:{port}"], me, heartbeat_interval=0.1)
                    (await seed.download(DownloadRequest(url))).close()
                try:
                    # The same supernode again (its cache restored), which has
                    # forgotten every peer: the seed's next heartbeat is a 404.
                    async with supernode(tmp_path / "sn", port=port) as node:
                        at_start = node.service.metrics()
                        await until(lambda: node.service.metrics().get("announces"))
                        before = upload.stats["pieces"]
                        async with swarm(tmp_path / "b", node, 1, parallel=1) as (b,):
                            await fetch_and_check(b, url, data, tmp_path)
                            return (at_start.get("announces", 0),
                                    node.service.metrics().get("announces"),
                                    upload.stats["pieces"] - before)
                finally:
                    await seed.aclose()

    announced_at_start, announced, served = run(main())
    assert announced_at_start == 0 and announced == 1
    assert served == 4                  # every piece from the seed, none from the CDN
