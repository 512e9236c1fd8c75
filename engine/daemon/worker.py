"""A dfdaemon worker: one upload server on the shared port, downloads on request.

Started by the coordinator (engine.daemon.supervisor) as
``python -m engine.daemon.worker --fd N``; everything else arrives in the
``init`` message on that channel. Then, on uvloop:

- an UploadServer on the daemon's port with SO_REUSEPORT (the kernel spreads
  peers' connections over the workers), paced by the host upload bucket;
- a Downloader paced by the host download bucket, running the jobs the
  coordinator sends (``start``), streaming ``accepted``/``progress`` and one
  ``done`` or ``error`` per job back. The output is a hard link to the
  task's data file when it is on the store's filesystem (one write of the
  file instead of two; a link the filesystem refuses at the end becomes an
  in-kernel copy), unless dfget asked for ``copy``; otherwise it is written
  while the pieces arrive (engine.download.output) and renamed into place.
  ``link`` insists on the link (an error where there can be none);
- ``stats`` answers with the downloader's and upload server's counters,
  ``forget`` drops a cached open task (GC removed it), ``cancel`` stops a job.

The coordinator gives each task id to exactly one worker, so only that
worker ever creates the task in the store. The worker exits when the
channel ends or on ``shutdown``; it ignores SIGINT/SIGTERM (see supervisor).

Per-task limits: a request with ``limit`` passes its own LocalBucket to
the one Downloader, which chains it in front of the host bucket for that
download. A request for a task that is already running in this worker
joins that download, whatever its own limit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import time

from engine.cli import tune_gc
from engine.control import ControlBlock, LocalBucket
from engine.errors import DamselflyError
from engine.localapi import Channel, DownloadCommand, error_event
from engine.messages import PeerInfo
from engine.store import PieceStore
from engine.types import PeerId, TaskId
from engine.upload import UploadServer

log = logging.getLogger(__name__)
PROGRESS_EVERY = 0.1  # seconds between progress events for one job


class Worker:
    """One worker's state; owned by its event loop."""

    def __init__(self, channel: Channel, init: dict) -> None:
        self.channel, self.init = channel, init
        self.jobs: dict[int, asyncio.Task] = {}
        self.chores: set[asyncio.Task] = set()  # supernode calls: announces, leaves after GC
        self.block: ControlBlock | None = None
        self.upload: UploadServer | None = None
        self.downloader = None
        self.session = None

    async def run(self) -> None:
        from engine.download import Downloader  # heavy imports after the channel is up
        import aiohttp

        init = self.init
        self.block = ControlBlock.open(os.path.join(init["data_dir"], "control"))
        self.store = PieceStore(init["data_dir"], budget=self.block.budget(init["slot"]))
        self.peer = PeerInfo(PeerId(init["peer_id"]), init["advertise_ip"], init["port"],
                             init.get("location", ""))
        self.upload = UploadServer(self.store, init["listen_ip"], init["port"],
                                   slots=init["upload_slots"], pacer=self.block.upload,
                                   reuse_port=True)
        # No cookie jar: an origin's cookies must never reach a supernode.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        try:
            await self.upload.start()
            self.downloader = Downloader(self.store, init["supernodes"], self.peer,
                                         parallel=init["parallel"], pacer=self.block.download,
                                         session=self.session)
            await self.channel.send({"op": "ready", "pid": os.getpid()})
            if init["slot"] == 0:
                # One worker re-offers what the store already holds (the
                # workers share the store and the peer id).
                self._chore(self.downloader.announce_cached())
            while (message := await self.channel.receive()) is not None:
                if message.get("op") == "shutdown":
                    break
                self._handle(message)
        finally:
            await self._teardown()

    def _handle(self, message: dict) -> None:
        op = message.get("op")
        if op == "start":
            job = message["job"]
            task = asyncio.create_task(self._job(job, message["request"]))
            self.jobs[job] = task
            task.add_done_callback(lambda _t, job=job: self.jobs.pop(job, None))
        elif op == "cancel":
            task = self.jobs.get(message.get("job"))
            if task is not None:
                task.cancel()
        elif op == "stats":
            self.channel.send_nowait({"op": "stats", "req": message.get("req"),
                                      "pid": os.getpid(),
                                      "download": self.downloader.stats.as_dict(),
                                      "upload": dict(self.upload.stats)})
        elif op == "forget":
            task_id = TaskId(message["task"])
            self.upload.forget(task_id)
            self._chore(self.downloader.leave(task_id))
        else:
            log.warning("unknown message from the coordinator: %r", op)

    def _chore(self, coro) -> None:
        chore = asyncio.create_task(coro)
        self.chores.add(chore)
        chore.add_done_callback(self.chores.discard)

    async def _job(self, job: int, wire: dict) -> None:
        from engine.download import DownloadRequest
        from engine.download.output import OutputFile

        send = self.channel.send_nowait
        started = time.monotonic()
        last = {"at": 0.0, "progress": None}
        output = None
        try:
            cmd = DownloadCommand.from_wire(wire)
            back_source = cmd.back_source and self.init["back_source"]
            request = DownloadRequest(cmd.url, cmd.headers, cmd.digest, cmd.tag,
                                      cmd.filter_params, back_source, cmd.timeout)
            send({"job": job, "event": "accepted", "task_id": request.task_id.hex})

            def on_progress(p) -> None:
                last["progress"] = p
                if not cmd.progress:
                    return
                now = time.monotonic()
                if now - last["at"] >= PROGRESS_EVERY:
                    last["at"] = now
                    send({"job": job, "event": "progress", **_progress_fields(p)})

            link = cmd.link or (not cmd.copy and self._same_filesystem(cmd.output))
            output = None if link else OutputFile(cmd.output)
            # Starts empty: --limit holds from the first byte, with no burst.
            pacer = LocalBucket(cmd.limit, full=False) if cmd.limit else None
            try:
                task = await self.downloader.download(request, on_progress, pacer=pacer,
                                                      output=output)
            except BaseException:
                output = None  # the downloader abandoned it
                raise
            try:
                if output is None:
                    await asyncio.to_thread(task.export, cmd.output, True, not cmd.link)
                else:
                    finishing = asyncio.to_thread(output.finish, task)
                    output = None  # from here on finish cleans up after itself
                    await finishing
                p = last["progress"]
                done = {"job": job, "event": "done", "task_id": task.task_id.hex,
                        "output": cmd.output, "length": task.meta.length,
                        "sha256": task.meta.sha256, "seconds": time.monotonic() - started,
                        "from_peers": 0, "from_cdn": 0, "from_origin": 0}
                if p is not None:
                    done.update({k: getattr(p, k) for k in ("from_peers", "from_cdn",
                                                            "from_origin")})
            finally:
                task.close()
            send(done)
        except asyncio.CancelledError:
            if output is not None:  # downloaded, not finished: no disk job writes to it
                output.abort()
            raise
        except Exception as exc:  # every failure must reach dfget as an event
            if output is not None:
                output.abort()
            if not isinstance(exc, DamselflyError):
                log.exception("job %d failed unexpectedly", job)
            send({"job": job, **error_event(exc)})

    def _same_filesystem(self, output: str) -> bool:
        """Whether ``output`` can be a hard link to the store's files."""
        try:
            return os.stat(os.path.dirname(output)).st_dev == os.stat(self.store.root).st_dev
        except OSError:
            return False  # the copy path reports what is wrong with the output

    async def _teardown(self) -> None:
        pending = [*self.jobs.values(), *self.chores]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self.downloader is not None:
            await self.downloader.aclose()
        if self.upload is not None:
            await self.upload.close()
        if self.session is not None:
            await self.session.close()
        if self.block is not None:
            self.block.close()
        await self.channel.aclose()


def _progress_fields(p) -> dict:
    return {"task_id": str(p.task_id), "state": p.state, "length": p.length,
            "done_bytes": p.done_bytes, "pieces_done": p.pieces_done,
            "piece_count": p.piece_count, "from_peers": p.from_peers,
            "from_cdn": p.from_cdn, "from_origin": p.from_origin}


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    channel = Channel(reader, writer)
    init = await channel.receive()
    if init is None or init.get("op") != "init":
        return
    logging.getLogger().setLevel(init.get("log_level", "info").upper())
    await Worker(channel, init).run()


def main() -> None:
    # Before anything else: the coordinator handles signals for the group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    parser = argparse.ArgumentParser(prog="dfdaemon-worker")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(format=f"%(asctime)s worker[{os.getpid()}] %(levelname)s "
                               "%(name)s: %(message)s")
    import uvloop
    tune_gc()
    uvloop.run(_main(args.fd))


if __name__ == "__main__":
    main()
