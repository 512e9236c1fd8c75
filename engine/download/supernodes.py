"""Talking to the supernodes: choice by rendezvous hashing, failover, JSON calls.

Several supernodes share the load without talking to each other: every peer
orders the list by rendezvous (highest random weight) hashing of the task id,
so all peers of one task pick the same supernode first, and removing a
supernode moves only the tasks it had. When the first choice is unreachable
(refused connection, timeout, 5xx) the peer registers with the next one.

A 4xx answer is a refusal, not an outage: it is raised as SupernodeError at
once, without failover, since another supernode would refuse the same way.
When every supernode is unreachable the error is ``Unreachable`` (a
SupernodeError), which the downloader turns into back-to-source if allowed.

The register call carries the request headers (for the CDN's back-to-source
fetch); they go nowhere else and are never logged here.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import orjson

from engine.download.rpc import BadAnswer, RpcClient
from engine.errors import BadInput, SupernodeError
from engine.messages import (Announce, Heartbeat, Leave, PeerInfo, RegisterRequest,
                             ScheduleRequest, ScheduleResponse, TaskView)
from engine.types import PeerId, TaskId

log = logging.getLogger(__name__)


class Refused(SupernodeError):
    """A supernode answered 4xx; ``status`` says which."""

    def __init__(self, message: str, status: int) -> None:
        self.status = status
        super().__init__(message)


class Unreachable(SupernodeError):
    """No supernode in the list answered (connection refused, timeout, 5xx).

    A refinement of SupernodeError that only the downloader's failover and
    back-to-source logic tells apart; everybody else sees a SupernodeError.
    """


def rendezvous_order(key: str, nodes: Sequence[str]) -> list[str]:
    """``nodes`` ordered by rendezvous hashing of ``key`` (best first), duplicates dropped."""
    unique = list(dict.fromkeys(nodes))
    return sorted(unique, key=lambda node: hashlib.sha256(
        f"{node}\0{key}".encode()).digest(), reverse=True)


def base_url(node: str) -> str:
    """``host:port`` or an http(s) URL to the URL prefix of the API."""
    node = node.strip().rstrip("/")
    if not node:
        raise BadInput("empty supernode address")
    return node if node.startswith(("http://", "https://")) else f"http://{node}"


async def call(rpc: RpcClient, node: str, path: str, body: dict, timeout: float) -> Any:
    """POST ``body`` as JSON to ``node``; the decoded answer.

    Raises Unreachable for an outage of this node, SupernodeError for a refusal.
    """
    try:
        status, data = await rpc.post(base_url(node), path, orjson.dumps(body), timeout)
    except (OSError, TimeoutError, BadAnswer) as exc:
        raise Unreachable(f"supernode {node} unreachable: {exc or type(exc).__name__}") from exc
    if status >= 500:
        raise Unreachable(f"supernode {node} answered {status} to {path}")
    try:
        decoded = orjson.loads(data) if data else None
    except orjson.JSONDecodeError as exc:
        raise SupernodeError(f"supernode {node} sent invalid JSON for {path}") from exc
    if status >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else None
        raise Refused(f"supernode {node} refused {path} ({status}): "
                      f"{message or data[:200].decode('utf-8', 'replace')}", status)
    return decoded


class SupernodeLink:
    """One task's conversation with the supernode in charge of it.

    Keeps the register request (headers included, in memory only) so that a
    failover can register with the next supernode. One event loop owns it.
    """

    def __init__(self, rpc: RpcClient, nodes: Sequence[str], task_id: TaskId,
                 timeout: float = 10.0) -> None:
        if not nodes:
            raise Unreachable("no supernode configured")
        self.rpc, self.timeout = rpc, timeout
        self.order = rendezvous_order(task_id.hex, nodes)
        self.current: str | None = None
        self.failovers = 0
        self._next = 0
        self._register: RegisterRequest | None = None

    async def register(self, request: RegisterRequest) -> TaskView:
        """Register with the first reachable supernode in rendezvous order."""
        self._register = request
        problems = []
        while self._next < len(self.order):
            node = self.order[self._next]
            try:
                view = TaskView.from_wire(
                    await call(self.rpc, node, "/api/v1/register", request.to_wire(),
                               self.timeout))
            except Unreachable as exc:
                problems.append(str(exc))
                self._next += 1
                self.failovers += 1 if self._next < len(self.order) else 0
                continue
            except BadInput as exc:
                raise SupernodeError(f"supernode {node} sent a bad task view: {exc}") from exc
            self.current = node
            return view
        raise Unreachable("; ".join(problems) or "every supernode already failed")

    async def rejoin(self, peer_id: PeerId, task_id: TaskId) -> TaskView:
        """Leave ``task_id`` at the current supernode, then register again there."""
        assert self.current is not None and self._register is not None
        await leave(self.rpc, self.current, peer_id, task_id, self.timeout)
        return await self.register(self._register)

    async def schedule(self, request: ScheduleRequest) -> ScheduleResponse:
        """One schedule round, riding over two kinds of trouble.

        An outage: register with the next supernode and ask it instead. A
        404 (the supernode forgot this peer or task: a restart, a missed
        heartbeat): register again with the same one. A 400 for a batch of
        results (an assignment expired before its result came): ask again
        without them. In every case the results are dropped; the supernode
        learns those pieces when it assigns them again and the peer answers
        "already have it".
        """
        retried = False
        while True:
            assert self.current is not None and self._register is not None
            try:
                data = await call(self.rpc, self.current, "/api/v1/schedule",
                                  request.to_wire(), self.timeout)
            except Unreachable as exc:
                log.warning("%s; failing over", exc)
                self._next += 1
                self.current = None
                self.failovers += 1
                view = await self.register(self._register)
            except Refused as exc:
                if retried or exc.status not in (400, 404) or (
                        exc.status == 400 and not request.results):
                    raise
                retried = True
                log.warning("%s; asking again", exc)
                view = await self.register(self._register) if exc.status == 404 else None
            else:
                try:
                    return ScheduleResponse.from_wire(data)
                except BadInput as exc:
                    raise SupernodeError(
                        f"supernode {self.current} sent a bad schedule answer: {exc}") from exc
            task_id = view.task_id if view is not None else request.task_id
            request = ScheduleRequest(task_id, request.peer_id, (), request.want)


async def heartbeat(rpc: RpcClient, node: str, peer: PeerInfo | PeerId,
                    timeout: float) -> None:
    peer_id = peer.peer_id if isinstance(peer, PeerInfo) else peer
    await call(rpc, node, "/api/v1/heartbeat", Heartbeat(peer_id).to_wire(), timeout)


async def leave(rpc: RpcClient, node: str, peer_id: PeerId,
                task_id: TaskId | None, timeout: float) -> None:
    await call(rpc, node, "/api/v1/leave", Leave(peer_id, task_id).to_wire(), timeout)


async def announce(rpc: RpcClient, node: str, msg: Announce, timeout: float) -> TaskView:
    data = await call(rpc, node, "/api/v1/announce", msg.to_wire(), timeout)
    try:
        return TaskView.from_wire(data)
    except BadInput as exc:
        raise SupernodeError(f"supernode {node} sent a bad task view: {exc}") from exc
