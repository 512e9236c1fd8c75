"""Shared pieces of the downloader integration tests: peers and checks.

``swarm(dir, node, n)`` runs n peers in the current event loop, each with its
own PieceStore, UploadServer and Downloader registered with the supernode
``node``. For "the supernode is down" use ``tests.helpers.dead_port``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from dataclasses import dataclass

from engine.download import Downloader, DownloadRequest
from engine.messages import PeerInfo
from engine.store import PieceStore
from engine.taskfile import TaskFile
from engine.types import PeerId
from engine.upload import UploadServer

PIECE = 1 << 20
_serial = itertools.count()


@dataclass
class Peer:
    store: PieceStore
    upload: UploadServer
    downloader: Downloader


@contextlib.asynccontextmanager
async def swarm(root, node, count: int, **kwargs):
    """``count`` peers registered with ``node`` (a SupernodeServer), torn down in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        peers = []
        for _ in range(count):
            i = next(_serial)
            store = PieceStore(os.path.join(str(root), f"peer{i}"))
            upload = await stack.enter_async_context(UploadServer(store))
            dl = await stack.enter_async_context(Downloader(
                store, [f"127.0.0.1:{node.port}"],
                PeerInfo(PeerId(f"peer-{i}"), "127.0.0.1", upload.port), **kwargs))
            peers.append(Peer(store, upload, dl))
        yield peers


def check_task(task: TaskFile, data: bytes, out_dir) -> None:
    """Export ``task`` and compare the output's sha256 with the origin's bytes."""
    out = os.path.join(str(out_dir), f"out-{next(_serial)}")
    task.export(out)
    with open(out, "rb") as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
    assert task.complete and task.meta.sha256 == hashlib.sha256(data).hexdigest()


async def fetch_and_check(peer: Peer, url: str, data: bytes, out_dir, **request) -> None:
    task = await peer.downloader.download(DownloadRequest(url, **request))
    try:
        check_task(task, data, out_dir)
    finally:
        task.close()
