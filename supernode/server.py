"""The supernode process: piece store, CDN upload server, service, API, clock.

``SupernodeServer(config)`` is an async context manager; entering it starts
everything in order and binds the ports (0 picks free ones, read back from
``port`` and ``upload_port``); leaving tears down in reverse order, every
step attempted even if an earlier one failed (AsyncExitStack)::

    async with SupernodeServer(SupernodeConfig(port=0, upload_port=0,
                                               data_dir=tmp)) as node:
        node.url          # "http://127.0.0.1:PORT"  (the API)
        node.upload_port  # the CDN's piece server, advertised in assignments

The CDN serves its pieces with the same ``engine.upload.UploadServer`` (native
sendfile) as every peer; assignments whose source is the CDN carry its
advertised address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from engine.diskspace import DiskBudget
from engine.store import PieceStore
from engine.upload import UploadServer
from supernode.api import Api
from supernode.apiserver import ApiServer
from supernode.config import SupernodeConfig
from supernode.origin import OriginClient
from supernode.service import SupernodeService, host_port

log = logging.getLogger(__name__)


class SupernodeServer:
    def __init__(self, config: SupernodeConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        # clock/wall are injectable so tests can step past TTLs without sleeping.
        self.config, self._clock, self._wall = config, clock, wall
        self.store: PieceStore | None = None
        self.upload: UploadServer | None = None
        self.service: SupernodeService | None = None
        self.port = 0
        self.upload_port = 0
        self._stack = contextlib.AsyncExitStack()

    @property
    def url(self) -> str:
        return f"http://{host_port(self.config.host, self.port)}"

    async def __aenter__(self) -> SupernodeServer:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        cfg, stack = self.config, self._stack
        self.store = PieceStore(cfg.data_path, DiskBudget(cfg.disk_floor_mib << 20))
        self.upload = await stack.enter_async_context(
            UploadServer(self.store, cfg.host, cfg.upload_port, slots=cfg.cdn_upload_slots))
        self.upload_port = self.upload.port
        origin = await stack.enter_async_context(
            OriginClient(cfg.origin_connect_timeout, cfg.origin_read_timeout))
        self.service = await stack.enter_async_context(SupernodeService(
            cfg, self.store, origin, cdn_addr=host_port(cfg.advertised, self.upload_port),
            forget=self.upload.forget, clock=self._clock, wall=self._wall))
        api = await stack.enter_async_context(
            ApiServer(Api(self.service, self._upload_metrics), cfg.host, cfg.port))
        self.port = api.port
        ticker = asyncio.create_task(self._tick(), name="supernode clock")
        stack.push_async_callback(_cancel, ticker)
        log.info("supernode API on %s, CDN uploads on port %d, data in %s",
                 self.url, self.upload_port, self.store.root)

    async def _tick(self) -> None:
        # The only place that turns wall time into scheduler events.
        while True:
            await asyncio.sleep(self.config.tick_interval)
            try:
                self.service.tick()
            except Exception:
                log.exception("scheduler tick failed")

    def _upload_metrics(self) -> dict[str, int]:
        stats = self.upload.stats
        return {"pieces_served": stats["pieces"], "bytes_served": stats["bytes"],
                "upload_not_found": stats["not_found"], "upload_busy": stats["busy"]}


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
