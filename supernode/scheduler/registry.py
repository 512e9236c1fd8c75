"""Who is where: every host, swarm and open flight, and the primitives that
change them while keeping the indexes consistent.

Not thread-safe; one writer applies events one at a time. ``core.Scheduler``
validates events and decides; this module only does bookkeeping, each
primitive leaving every index (holders, buckets, loads, open flights,
heartbeat order) consistent with the others.
"""

from __future__ import annotations

from collections import OrderedDict

from engine.errors import BadInput
from engine.types import PeerId, TaskId
from supernode.scheduler.errors import UnknownPeer, UnknownTask
from supernode.scheduler.model import (
    Flight, Host, Member, Swarm, close_piece, end_flight, open_flight)
from supernode.scheduler.states import (
    ASSIGN, COMPLETE_ALL, DOWNLOADING, HEALTHY, IN_FLIGHT, MISSING, PEER, PIECE, RELEASE)


class Registry:
    """Hosts, swarms, open flights and heartbeat order, kept in step."""

    __slots__ = ("cdn", "hosts", "swarms", "open", "seen")

    def __init__(self, cdn: Host) -> None:
        self.cdn = cdn
        self.hosts: dict[PeerId, Host] = {cdn.peer_id: cdn}
        self.swarms: dict[TaskId, Swarm] = {}
        # Open flights in deadline order (one timeout, monotonic clock), so
        # expiry pops from the front; an OrderedDict also deletes in O(1).
        self.open: OrderedDict[Flight, None] = OrderedDict()
        # Peer hosts by last contact, oldest first (the CDN never times out).
        self.seen: OrderedDict[Host, None] = OrderedDict()

    # --- lookups -------------------------------------------------------------

    def swarm(self, task: TaskId) -> Swarm:
        sw = self.swarms.get(task)
        if sw is None:
            raise UnknownTask(f"task {task} is not scheduled here")
        return sw

    def member(self, task: TaskId, peer: PeerId) -> Member:
        """The peer's membership in the task; the CDN never asks, so it is not found."""
        self.swarm(task)
        host = self.hosts.get(peer)
        member = host.members.get(task) if host is not None and not host.is_cdn else None
        if member is None:
            raise UnknownPeer(f"peer {peer} is not registered in task {task}")
        return member

    @staticmethod
    def check_piece(sw: Swarm, piece: int) -> None:
        if sw.n is None:
            raise BadInput(f"task {sw.task_id} has no known length yet")
        if not 0 <= piece < sw.n:
            raise BadInput(f"piece {piece} out of range (task has {sw.n} pieces)")

    # --- swarms and members ----------------------------------------------------

    def new_swarm(self, task: TaskId) -> Swarm:
        """A task appears; the CDN is its first member."""
        sw = self.swarms[task] = Swarm(task)
        cdn = sw.cdn = Member(self.cdn, sw)
        sw.members[self.cdn] = cdn
        self.cdn.members[task] = cdn
        return sw

    def join(self, sw: Swarm, host: Host) -> Member:
        member = Member(host, sw)
        sw.members[host] = member
        host.members[sw.task_id] = member
        if sw.n is not None:
            self.arm(member)
        self.seen[host] = None
        return member

    @staticmethod
    def arm(member: Member) -> None:
        """The piece count is known: a peer wants everything, the CDN nothing yet."""
        n = member.swarm.n or 0
        if member is not member.swarm.cdn:
            member.wanted = set(range(n))
        if n == 0:
            member.state = PEER.next(member.state, COMPLETE_ALL)

    def remove(self, member: Member, event: str) -> None:
        """``member`` leaves its swarm (``event``: leave or timeout).

        Its own attempts close, the attempts it was serving are released (the
        downloaders want those pieces again) and its pieces leave the maps.
        """
        member.state = PEER.next(member.state, event)
        sw, host = member.swarm, member.host
        held = sw.held_by(member) if member.have else []
        member.alive = False
        for piece in list(member.inflight):
            self.close_attempts(member, piece)
        for flight in list(member.out):
            self.release(flight)
        for piece in held:
            sw.lose(member, piece)
        if held and member is not sw.cdn:
            sw.sources -= 1
        if member.newcomer:
            member.newcomer = False
            sw.newcomers -= 1
        if member is sw.cdn:
            sw.cdn = None
        del sw.members[host]
        del host.members[sw.task_id]

    def forget_host_if_idle(self, host: Host) -> None:
        # An isolated host is remembered even with no task, so that leaving
        # and registering again does not wash its isolation away.
        if host.members or host.is_cdn:
            return
        self.seen.pop(host, None)
        if host.health == HEALTHY and not host.isolated_in:
            self.hosts.pop(host.peer_id, None)

    def touch(self, host: Host, now: float) -> None:
        host.last_seen = now
        if not host.is_cdn:
            self.seen.move_to_end(host)

    # --- flights ---------------------------------------------------------------

    def assign(self, member: Member, source: Member, piece: int, now: float,
               deadline: float) -> None:
        PIECE.next(IN_FLIGHT if piece in member.inflight else MISSING, ASSIGN)
        if member.state != DOWNLOADING:
            member.state = PEER.next(member.state, ASSIGN)
        member.wanted.discard(piece)
        self.open[open_flight(member, source, piece, now, deadline)] = None

    def close_attempts(self, member: Member, piece: int) -> None:
        """Close every attempt at ``piece``: it arrived (endgame losers close
        too), or the downloader left. Either way the piece is not wanted again."""
        for flight in member.inflight[piece]:
            del self.open[flight]
        close_piece(member, piece)

    def release(self, flight: Flight) -> None:
        """An attempt ended without the piece; if it was the last one, want it again."""
        del self.open[flight]
        if end_flight(flight):
            PIECE.next(IN_FLIGHT, RELEASE)
            flight.dst.wanted.add(flight.piece)

    def expire(self, now: float) -> int:
        """Release every attempt whose deadline has passed; return how many."""
        open_, expired = self.open, 0
        while open_:
            flight = next(iter(open_))
            if flight.deadline > now:
                break
            self.release(flight)
            expired += 1
        return expired
