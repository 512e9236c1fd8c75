"""Shared pieces of the supernode integration tests: config, clock, waiting, peers.

``supernode(tmp_path, ...)`` runs a ``SupernodeServer`` in-process on port 0
with fast origin retries; ``FakeClock`` lets a test step past TTLs without
sleeping; ``until`` waits for a condition of the server's own state (a CDN
fetch finishing), bounded, instead of a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Callable

import aiohttp

from supernode.config import SupernodeConfig
from supernode.server import SupernodeServer
from tests.integration.snpeer import TestPeer

MiB = 1 << 20


def config(tmp_path, **overrides) -> SupernodeConfig:
    values = dict(port=0, upload_port=0, data_dir=str(tmp_path / "supernode"),
                  origin_retry_backoff=0.01, origin_connect_timeout=2.0,
                  origin_read_timeout=2.0, tick_interval=0.05, wait_ms=20,
                  pending_wait_ms=20)
    values.update(overrides)
    return SupernodeConfig(**values)


class FakeClock:
    """Monotonic and wall time that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


@contextlib.asynccontextmanager
async def supernode(tmp_path, clock: FakeClock | None = None, **overrides):
    kw = {"clock": clock, "wall": clock.wall} if clock is not None else {}
    async with SupernodeServer(config(tmp_path, **overrides), **kw) as node:
        yield node


@contextlib.asynccontextmanager
async def peers(node: SupernodeServer, *names: str):
    """A client session and one TestPeer per name, all closed at the end."""
    async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(TestPeer(session, node.url, n)) for n in names]


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``condition()`` (server state), failing after ``timeout`` seconds."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def blob(n: int) -> bytes:
    """Random test bytes: a piece mix-up can never go unnoticed by chance."""
    return os.urandom(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
