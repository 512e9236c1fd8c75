"""Read-only questions about the scheduler's state, for the HTTP layer,
the status page and the tests. Nothing here changes state or reads the clock.
"""

from __future__ import annotations

from engine.types import PeerId, TaskId
from supernode.scheduler.registry import Registry
from supernode.scheduler.states import HAVE, HEALTHY, IN_FLIGHT, MISSING


class SchedulerView:
    """Queries over ``self._reg`` (mixed into ``core.Scheduler``)."""

    _reg: Registry

    def tasks(self) -> list[TaskId]:
        return list(self._reg.swarms)

    def task_state(self, task: TaskId) -> str:
        """pending, running, complete or failed (as in ``TaskView.state``)."""
        return self._reg.swarm(task).state

    def piece_count(self, task: TaskId) -> int | None:
        return self._reg.swarm(task).n

    def peers(self, task: TaskId) -> list[PeerId]:
        """Registered peers of the task, the CDN not included."""
        return [h.peer_id for h in self._reg.swarm(task).members if not h.is_cdn]

    def peer_state(self, task: TaskId, peer: PeerId) -> str:
        reg = self._reg
        host = reg.hosts.get(peer)
        if host is not None and host.is_cdn:
            member = reg.swarm(task).cdn
            return member.state if member is not None else "left"
        return reg.member(task, peer).state

    def piece_state(self, task: TaskId, peer: PeerId, piece: int) -> str:
        """missing, in_flight or have (for the CDN: have or missing)."""
        reg = self._reg
        sw = reg.swarm(task)
        reg.check_piece(sw, piece)
        host = reg.hosts.get(peer)
        if host is not None and host.is_cdn:
            return HAVE if sw.cdn_has[piece] else MISSING
        member = reg.member(task, peer)
        if piece in member.inflight:
            return IN_FLIGHT
        return MISSING if piece in member.wanted else HAVE

    def holders(self, task: TaskId, piece: int) -> frozenset[PeerId]:
        """Who can serve ``piece`` (isolated or busy hosts included), the CDN too."""
        sw = self._reg.swarm(task)
        self._reg.check_piece(sw, piece)
        out = {m.host.peer_id for m in sw.holders[piece] if m.alive}
        if sw.cdn is not None and sw.cdn_has[piece]:
            out.add(sw.cdn.host.peer_id)
        return frozenset(out)

    def replicas(self, task: TaskId, piece: int) -> int:
        sw = self._reg.swarm(task)
        self._reg.check_piece(sw, piece)
        return sw.count[piece]

    def in_flight(self, task: TaskId, peer: PeerId) -> dict[int, tuple[PeerId, ...]]:
        """The peer's open attempts: piece -> sources (two in endgame)."""
        member = self._reg.member(task, peer)
        return {p: tuple(f.src.host.peer_id for f in flights)
                for p, flights in member.inflight.items()}

    def load(self, peer: PeerId) -> int:
        """Open flights the host serves, over all tasks (0 if unknown)."""
        host = self._reg.hosts.get(peer)
        return host.load if host is not None else 0

    def upload_slots(self, peer: PeerId) -> int:
        host = self._reg.hosts.get(peer)
        return host.slots if host is not None else 0

    def addr(self, peer: PeerId) -> str:
        """The address the peer registered ("" if it gave none or is unknown)."""
        host = self._reg.hosts.get(peer)
        return host.addr if host is not None else ""

    def is_isolated(self, peer: PeerId, task: TaskId | None = None) -> bool:
        """Host-wide isolation, or (with ``task``) isolation in that task as well."""
        reg = self._reg
        host = reg.hosts.get(peer)
        if host is None:
            return False
        if host.health != HEALTHY:
            return True
        if task is None:
            return False
        sw = reg.swarms.get(task)
        return sw is not None and host in sw.blocked

    def stats(self) -> dict[str, int]:
        reg = self._reg
        return {"tasks": len(reg.swarms), "hosts": len(reg.hosts),
                "members": sum(len(sw.members) for sw in reg.swarms.values()),
                "open_flights": len(reg.open),
                "isolated_hosts": sum(h.health != HEALTHY for h in reg.hosts.values())}
