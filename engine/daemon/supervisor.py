"""Worker processes: start them, talk to them, notice deaths, restart them.

Each worker is ``python -m engine.daemon.worker --fd N``, where N is one end
of a socketpair; the other end is the coordinator's channel to it (NDJSON,
engine.localapi framing). The first message to a worker is its ``init``; it
answers ``{"op": "ready"}`` once its upload server listens.

What must stay true:

* A worker's lifetime is tied to its channel: it exits when the channel
  ends, so the coordinator dying (even by SIGKILL) takes its workers along,
  and no orphan survives. Workers ignore SIGINT and SIGTERM: a signal to the
  whole process group reaches the coordinator, which shuts them down in
  order, instead of racing it and being restarted.
* Messages for a worker that is starting are kept and sent once it is
  ready; messages for a worker that died are dropped, and ``on_death`` tells
  the owner, who re-sends what still matters to the replacement.
* A worker that dies within ``STABLE_AFTER`` seconds of starting is
  restarted after a doubling backoff, so a crash loop does not spin.

One event loop owns all of this; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Callable

from engine.errors import BrokenByPeer, DamselflyError
from engine.localapi import Channel

log = logging.getLogger(__name__)
STABLE_AFTER = 5.0
MAX_BACKOFF = 10.0
STOP_GRACE = 10.0


class WorkerHandle:
    """One slot: the current process for it and what waits to be sent."""

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self.ready = False
        self.backlog: list[dict] = []
        self.started_at = 0.0
        self.backoff = 0.0
        self.restarts = 0
        self.watch: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Supervisor:
    """Keeps ``count`` workers alive.

    ``init_for(slot)`` builds a worker's init message; ``on_message(slot,
    msg)`` receives everything a worker sends except ``ready``;
    ``on_death(slot, returncode)`` runs after a worker died (before its
    replacement is ready).
    """

    def __init__(self, count: int, init_for: Callable[[int], dict],
                 on_message: Callable[[int, dict], None],
                 on_death: Callable[[int, int | None], None]) -> None:
        self.handles = [WorkerHandle(i) for i in range(count)]
        self._init_for, self._on_message, self._on_death = init_for, on_message, on_death
        self._stopping = False
        self._all_ready: asyncio.Future | None = None  # set by start()

    async def start(self, timeout: float = 60.0) -> None:
        """Start every worker and wait until all of them are ready."""
        self._all_ready = asyncio.get_running_loop().create_future()
        for handle in self.handles:
            await self._spawn(handle)
        try:
            await asyncio.wait_for(asyncio.shield(self._all_ready), timeout)
        except TimeoutError as exc:
            raise DamselflyError(f"workers not ready after {timeout:.0f} s") from exc

    def send(self, slot: int, message: dict) -> None:
        handle = self.handles[slot]
        if handle.ready and handle.channel is not None:
            handle.channel.send_nowait(message)
        else:
            handle.backlog.append(message)

    def broadcast(self, message: dict) -> None:
        for handle in self.handles:
            if handle.ready:
                self.send(handle.slot, message)

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self.handles if h.pid is not None]

    async def stop(self) -> None:
        """Ask every worker to leave, wait for them, kill the ones that do not."""
        self._stopping = True
        for handle in self.handles:
            if handle.channel is not None:
                handle.channel.send_nowait({"op": "shutdown"})
        procs = [h.process for h in self.handles if h.process is not None]
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if waits:
            _, late = await asyncio.wait(waits, timeout=STOP_GRACE)
            for proc in procs:
                if proc.returncode is None:
                    log.warning("worker %d did not stop; killing it", proc.pid)
                    proc.kill()
            await asyncio.gather(*waits, return_exceptions=True)
        for handle in self.handles:
            if handle.watch is not None:
                handle.watch.cancel()
        await asyncio.gather(*(h.watch for h in self.handles if h.watch),
                             return_exceptions=True)
        for handle in self.handles:  # one respawned while we were stopping
            if handle.process is not None and handle.process.returncode is None:
                handle.process.kill()
                await handle.process.wait()
        for handle in self.handles:
            if handle.channel is not None:
                await handle.channel.aclose()
                handle.channel = None

    async def _spawn(self, handle: WorkerHandle) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            handle.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.daemon.worker", "--fd", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        handle.channel = Channel(reader, writer)
        handle.ready = False
        handle.started_at = asyncio.get_running_loop().time()
        handle.channel.send_nowait(self._init_for(handle.slot))
        handle.watch = asyncio.create_task(self._watch(handle, handle.channel, handle.process))
        log.info("worker %d started (pid %d)", handle.slot, handle.process.pid)

    async def _watch(self, handle: WorkerHandle, channel: Channel,
                     process: asyncio.subprocess.Process) -> None:
        try:
            while (message := await channel.receive()) is not None:
                if message.get("op") == "ready":
                    self._ready(handle)
                    continue
                try:
                    self._on_message(handle.slot, message)
                except Exception:  # a bug in a handler must not stop the supervision
                    log.exception("handling a message from worker %d failed", handle.slot)
        except (DamselflyError, ConnectionError) as exc:
            if not isinstance(exc, BrokenByPeer):
                log.warning("worker %d sent garbage (%s); stopping it", handle.slot, exc)
            if process.returncode is None:
                process.kill()
        code = await process.wait()
        await channel.aclose()
        if self._stopping:
            return
        if self._all_ready is not None and not self._all_ready.done():
            # Dying before the first "ready" (a port it cannot bind, a broken
            # install) will not get better by restarting: fail the start.
            self._all_ready.set_exception(DamselflyError(
                f"worker {handle.slot} exited with status {code} while starting"))
            return
        log.warning("worker %d (pid %d) died with status %s", handle.slot, process.pid, code)
        handle.ready, handle.channel, handle.backlog = False, None, []
        handle.restarts += 1
        self._on_death(handle.slot, code)
        loop = asyncio.get_running_loop()
        stable = loop.time() - handle.started_at >= STABLE_AFTER
        handle.backoff = 0.0 if stable else min(MAX_BACKOFF, max(0.1, 2 * handle.backoff))
        if handle.backoff:
            await asyncio.sleep(handle.backoff)
        if not self._stopping:
            await self._spawn(handle)

    def _ready(self, handle: WorkerHandle) -> None:
        handle.ready = True
        backlog, handle.backlog = handle.backlog, []
        for message in backlog:
            handle.channel.send_nowait(message)
        if self._all_ready is not None and not self._all_ready.done() and all(
                h.ready for h in self.handles):
            self._all_ready.set_result(None)
