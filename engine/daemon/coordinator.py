"""The dfdaemon coordinator: one per data directory, owner of the host's state.

It owns the control block (host token buckets, disk reservations), the
workers (engine.daemon.supervisor), the local API socket, GC and idle exit.
It moves no file bytes itself.

Jobs (engine.daemon.jobs). Each dfget download request is a job, routed so
that a task id runs in exactly one worker at a time: only that worker
creates the task in the store, and concurrent requests for one task join
one download there. When a worker dies, its disk reservations are
reclaimed and its unfinished jobs are sent again to the replacement, up to
MAX_ATTEMPTS, after their tasks were started over cleanly (see
``_restart_tasks``).

Timers, not polling: an idle daemon waits on its sockets, on the workers'
exits and on two timers (GC of the task that expires first, and idle exit:
engine.daemon.idle), so it uses no CPU. One event loop owns every field; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

import orjson

from engine.control import ControlBlock
from engine.daemon.config import DaemonConfig, proxy_address
from engine.proxy.rules import tunnel_ports
from engine.daemon.gc import ExpiryTable
from engine.daemon.hostinfo import advertise_ip, data_dir_lock, load_peer_id, reserve_port
from engine.daemon.idle import IdleExit
from engine.daemon.jobs import Job, JobTable
from engine.daemon.supervisor import Supervisor
from engine.errors import BrokenByPeer, ConfigError, DamselflyError
from engine.identity import TaskIdentity
from engine.localapi import Channel, DownloadCommand, error_event, parse_command
from engine.meta import write_atomically
from engine.store import PieceStore
from engine.types import PeerId, TaskId

log = logging.getLogger(__name__)
LEAVE_TIMEOUT = 5.0
STATS_TIMEOUT = 5.0
SUN_PATH_MAX = 107


class Coordinator:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.data = config.data_path
        self.table = JobTable(config.worker_count)
        self.expiry = ExpiryTable(config.task_ttl_seconds)
        self.upload_port = 0
        self.peer_id = ""
        self.supervisor: Supervisor | None = None
        self._stop = asyncio.Event()
        self._clients: set[asyncio.Task] = set()
        self._chores: set[asyncio.Task] = set()
        self._stats_req = 0
        self._stat_waits: dict[tuple[int, int], asyncio.Future] = {}
        self._retired: dict[str, dict[str, int]] = {"download": {}, "upload": {}}
        self._last_stats: dict[int, dict] = {}
        self._gc_timer: asyncio.TimerHandle | None = None
        self.idle = IdleExit(config.idle_exit_seconds, config.idle_exit,
                             busy=lambda: bool(self._clients or self.table
                                               or (self.proxy and self.proxy.active)),
                             uploaded=self._uploaded, spawn=self._spawn, exit=self.stop)
        self._rpc = None  # RpcClient, only to leave tasks at the supernodes
        self.proxy = None  # engine.proxy.server.Proxy with --proxy

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start everything, report readiness, serve until stopped, tear down in reverse."""
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            os.makedirs(self.data, mode=0o700, exist_ok=True)
            stack.enter_context(data_dir_lock(self.data))
            self.store = PieceStore(self.data)
            for meta in await asyncio.to_thread(self.store.scan):
                self.expiry.touch(meta.task_id, _mtime(self.store, meta.task_id))
            self.block = ControlBlock.create(os.path.join(self.data, "control"))
            stack.callback(self.block.close)
            self.block.upload.configure(self.config.upload_limit_bytes)
            self.block.download.configure(self.config.download_limit_bytes)
            self.peer_id = load_peer_id(self.data, self.config.peer_id)
            port_sock = reserve_port(self.config.listen_ip, self.config.upload_port)
            stack.callback(port_sock.close)
            self.upload_port = port_sock.getsockname()[1]
            self.advertise_ip = advertise_ip(self.config)
            self.supervisor = Supervisor(self.config.worker_count, self._init_for,
                                         self._on_worker_message, self._on_worker_death)
            stack.push_async_callback(self.supervisor.stop)
            await self.supervisor.start()
            stack.push_async_callback(self._end_chores)
            await self._serve_socket(stack)
            if self.config.proxy:
                await self._serve_proxy(stack)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
                stack.callback(loop.remove_signal_handler, sig)
            stack.callback(self._cancel_timers)
            self._announce_ready(stack)
            self._arm_gc()
            self.idle.arm()
            log.info("dfdaemon ready: peer %s, upload port %d, %d workers, socket %s",
                     self.peer_id, self.upload_port, self.config.worker_count,
                     self.config.socket_path)
            await self._stop.wait()
            log.info("dfdaemon stopping")

    # --- startup pieces ----------------------------------------------------------

    def _init_for(self, slot: int) -> dict:
        c = self.config
        return {"op": "init", "slot": slot, "data_dir": self.data, "listen_ip": c.listen_ip,
                "port": self.upload_port, "advertise_ip": self.advertise_ip,
                "peer_id": self.peer_id, "location": c.location,
                "supernodes": c.supernode_urls, "parallel": c.parallel,
                "upload_slots": c.upload_slots, "back_source": c.back_source,
                "log_level": c.log_level}

    async def _serve_socket(self, stack: contextlib.AsyncExitStack) -> None:
        path = self.config.socket_path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            raise ConfigError(f"socket path is longer than {SUN_PATH_MAX} bytes: {path}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: we hold the data dir lock
        server = await asyncio.start_unix_server(self._client, path)
        os.chmod(path, 0o600)
        stack.callback(_unlink_quietly, path)
        stack.push_async_callback(self._close_server, server)

    async def _close_server(self, server: asyncio.AbstractServer) -> None:
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()

    async def _serve_proxy(self, stack: contextlib.AsyncExitStack) -> None:
        from engine.proxy.server import Proxy  # aiohttp: only a daemon with a proxy loads it

        host, port = proxy_address(self.config.proxy)
        self.proxy = Proxy(host=host, port=port, socket_path=self.config.socket_path,
                           data_dir=self.data, registry=self.config.registry,
                           tunnel_ports=tunnel_ports(self.config.tunnel_ports),
                           on_busy=self.idle.cancel, on_idle=self.idle.arm)
        await self.proxy.start()
        stack.push_async_callback(self.proxy.close)

    def _announce_ready(self, stack: contextlib.AsyncExitStack) -> None:
        ready = {"pid": os.getpid(), "upload_port": self.upload_port,
                 "socket": self.config.socket_path, "peer_id": self.peer_id,
                 "data_dir": self.data, "workers": self.supervisor.pids}
        if self.proxy is not None:
            ready["proxy"] = self.proxy.address
        line = orjson.dumps(ready) + b"\n"
        if self.config.ready_file:
            write_atomically(self.config.ready_file, line)
            stack.callback(_unlink_quietly, self.config.ready_file)
        if self.config.ready_fd is not None:
            try:
                os.write(self.config.ready_fd, line)
                os.close(self.config.ready_fd)
            except OSError as exc:
                log.warning("could not write to the ready fd: %s", exc)

    # --- the local API -----------------------------------------------------------

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        self._clients.add(me)
        self.idle.cancel()
        channel = Channel(reader, writer)
        try:
            message = await channel.receive()
            if message is None:
                return
            try:
                command = parse_command(message)
            except DamselflyError as exc:
                await channel.send(error_event(exc))
                return
            if command == "stats":
                await channel.send(await self.stats())
            else:
                await self._download(channel, command)
        except (ConnectionError, BrokenByPeer):
            pass  # dfget went away; its job was cancelled in _download
        finally:
            self._clients.discard(me)
            await channel.aclose()
            self.idle.arm()

    async def _download(self, channel: Channel, command: DownloadCommand) -> None:
        try:
            task_id = TaskIdentity.of(command.url, tag=command.tag, digest=command.digest,
                                      filter_params=command.filter_params).task_id
        except DamselflyError as exc:
            await channel.send(error_event(exc))
            return
        job, send_now = self.table.add(command, task_id)
        if send_now:
            self.supervisor.send(job.slot, job.start_message())
        gone = asyncio.create_task(_wait_eof(channel, job))
        try:
            while True:
                event = await job.events.get()
                if event.get("event") == "_gone":
                    return
                await channel.send(event)
                if event.get("event") in ("done", "error"):
                    return
        finally:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
            if not job.finished:
                self.supervisor.send(job.slot, {"op": "cancel", "job": job.id})
            self.table.end(job)
            self._used(job.task_id)

    def _used(self, task_id: TaskId) -> None:
        """A task was just used: it expires a ttl from now, also after a restart
        (the meta file's mtime is what the next start reads back)."""
        now = time.time()
        with contextlib.suppress(OSError):
            os.utime(os.path.join(self.store.task_path(task_id), "meta"), (now, now))
        self.expiry.touch(task_id, now)
        self._arm_gc()

    # --- workers -----------------------------------------------------------------

    def _on_worker_message(self, slot: int, message: dict) -> None:
        job_id = message.pop("job", None)
        if job_id is not None:
            job = self.table.get(job_id, slot)
            if job is None:
                return  # a late event of a cancelled or reassigned job
            if message.get("event") in ("done", "error"):
                job.finished = True
            job.events.put_nowait(message)
        elif message.get("op") == "stats":
            self._last_stats[slot] = message
            waiter = self._stat_waits.pop((message.get("req"), slot), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)

    def _on_worker_death(self, slot: int, code: int | None) -> None:
        reclaimed = self.block.reclaim_slot(slot)
        if reclaimed:
            log.info("reclaimed %d reserved bytes of dead worker %d", reclaimed, slot)
        last = self._last_stats.pop(slot, None)
        if last is not None:  # keep the dead worker's counters in the totals
            for kind in ("download", "upload"):
                _add_into(self._retired[kind], last.get(kind, {}))
        for key, waiter in list(self._stat_waits.items()):
            if key[1] == slot and not waiter.done():
                waiter.set_result(None)
        again, failed = self.table.worker_died(slot)
        for job in failed:
            job.events.put_nowait(error_event(DamselflyError(
                f"the worker running this download died {job.attempts} times")))
        if again:
            self._spawn(self._restart_tasks({job.task_id for job in again}, again))

    async def _restart_tasks(self, tasks: set[TaskId], jobs: list[Job]) -> None:
        """Send the dead worker's jobs again, to resume where it stopped.

        Its verified pieces stay: their digests are in the task's journal
        (engine.store), so the replacement reuses them. The task is left at
        the supernode first, so the supernode forgets what it thought this
        peer held and had in flight; the replacement registers afresh and
        reports the pieces it finds in the store.
        """
        try:
            for task_id in tasks:
                await self._leave(task_id)
        finally:
            for job in self.table.release(tasks, jobs):
                log.info("re-requesting job %d (task %s) on worker %d", job.id, job.task_id,
                         job.slot)
                self.supervisor.send(job.slot, job.start_message())

    async def _leave(self, task_id: TaskId) -> None:
        from engine.download.rpc import RpcClient
        from engine.download.supernodes import leave

        if self._rpc is None:
            self._rpc = RpcClient()
        for node in self.config.supernode_urls:
            try:
                await leave(self._rpc, node, PeerId(self.peer_id), task_id, LEAVE_TIMEOUT)
            except DamselflyError as exc:
                log.info("leaving task %s at %s: %s", task_id, node, exc)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _end_chores(self) -> None:
        for task in list(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self._rpc is not None:
            self._rpc.close()

    async def stats(self) -> dict:
        """Every worker's counters summed (plus dead workers' last known ones)."""
        self._stats_req += 1
        req, loop = self._stats_req, asyncio.get_running_loop()
        waits = []
        for handle in self.supervisor.handles:
            waiter = loop.create_future()
            self._stat_waits[(req, handle.slot)] = waiter
            waits.append(waiter)
            self.supervisor.send(handle.slot, {"op": "stats", "req": req})
        done, _ = await asyncio.wait(waits, timeout=STATS_TIMEOUT)
        for handle in self.supervisor.handles:
            self._stat_waits.pop((req, handle.slot), None)
        totals = {k: dict(v) for k, v in self._retired.items()}
        for waiter in done:
            for kind in ("download", "upload"):
                _add_into(totals[kind], (waiter.result() or {}).get(kind, {}))
        return {"event": "stats", "pid": os.getpid(), "peer_id": self.peer_id,
                "upload_port": self.upload_port, "workers": self.supervisor.pids,
                "worker_restarts": sum(h.restarts for h in self.supervisor.handles),
                "active_jobs": len(self.table), "tasks_cached": len(self.expiry),
                "disk_reserved": self.block.disk_reserved(), **totals,
                **({"proxy": dict(self.proxy.counters)} if self.proxy is not None else {})}

    # --- timers ------------------------------------------------------------------

    async def _uploaded(self) -> int:
        return (await self.stats())["upload"].get("pieces", 0)

    def _arm_gc(self) -> None:
        if self._gc_timer is not None:
            self._gc_timer.cancel()
            self._gc_timer = None
        deadline = self.expiry.next_deadline()
        if deadline is not None:
            delay = max(0.0, deadline - time.time())
            self._gc_timer = asyncio.get_running_loop().call_later(delay, self._collect)

    def _collect(self) -> None:
        self._gc_timer = None
        now = time.time()
        for task_id in self.expiry.due(now):
            if self.table.busy(task_id):
                self.expiry.touch(task_id, now)  # in use: expires a ttl after this use
                continue
            log.info("removing task %s: unused for %s", task_id, self.config.task_ttl)
            self.store.remove(task_id)
            self.supervisor.broadcast({"op": "forget", "task": task_id.hex})
        self._arm_gc()

    def _cancel_timers(self) -> None:
        if self._gc_timer is not None:
            self._gc_timer.cancel()
        self.idle.cancel()


async def _wait_eof(channel: Channel, job: Job) -> None:
    """dfget sends nothing after its request: a read that ends means it left."""
    try:
        await channel.reader.read(1)
    except ConnectionError:
        pass
    job.events.put_nowait({"event": "_gone"})


def _add_into(total: dict, more: dict) -> None:
    for key, value in more.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def _mtime(store: PieceStore, task_id: TaskId) -> float:
    try:
        return os.stat(os.path.join(store.task_path(task_id), "meta")).st_mtime
    except OSError:
        return time.time()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
