"""The scheduler's state: hosts, tasks (swarms), their members and flights.

Plain slotted objects, mutated only by the core (``core.Scheduler``) and read
by the pure policies. Not thread-safe; one writer applies events one at a
time.

Layout, chosen so that no decision scans all peers of a task:

- ``Host``: one upload server (a dfdaemon or the CDN). Its ``load`` counts
  the open flights it serves in *every* task, because a host has one pool of
  upload slots.
- ``Member``: a host in one task. ``wanted`` holds the pieces it lacks and
  has not been assigned (a set of ints), ``inflight`` maps a piece to its
  open attempts. A piece it holds is in neither, so the piece state is
  derived, never stored twice: wanted -> missing, inflight -> in_flight,
  otherwise have.
- ``Swarm``: one task. Per piece: ``count`` (live replicas, the CDN
  included), ``holders`` (peer members holding it; the CDN is kept apart in
  ``cdn_has``), and the pieces grouped by replica count in ``buckets`` with
  the non-empty counts kept sorted in ``levels``, so rarest-first walks the
  few distinct counts instead of every piece.
- ``Flight``: one open assignment (downloader, source, piece, when opened,
  deadline).

Holders are removed lazily: a member that leaves is marked dead
(``alive = False``) and stays in the holder lists until a list is more than
half dead, when it is rebuilt. Removal from 256 lists of 10k holders would
otherwise cost a linear search each; readers skip dead entries.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from engine.types import PeerId, TaskId
from supernode.scheduler.states import HEALTHY, PENDING, REGISTERED


class Host:
    """One upload server, shared by all the tasks it takes part in."""

    __slots__ = ("peer_id", "location", "slots", "addr", "is_cdn", "load",
                 "last_seen", "members", "health", "fails", "oks", "isolated_in")

    def __init__(self, peer_id: PeerId, location: str = "", slots: int = 8,
                 addr: str = "", is_cdn: bool = False) -> None:
        self.peer_id = peer_id
        self.location = location
        self.slots = slots
        self.addr = addr
        self.is_cdn = is_cdn
        self.load = 0                       # open flights served, all tasks
        self.last_seen = 0.0
        self.members: dict[TaskId, Member] = {}
        self.health = HEALTHY               # host-wide, see states.SOURCE
        self.fails = 0.0                    # host-wide record, see health
        self.oks = 0.0
        self.isolated_in = 0                # tasks in which it is isolated

    def __repr__(self) -> str:
        return f"<Host {self.peer_id} load={self.load}/{self.slots} {self.health}>"


class Member:
    """One host taking part in one task."""

    __slots__ = ("host", "swarm", "state", "wanted", "inflight", "have", "out", "alive",
                 "fails", "oks", "from_cdn", "newcomer")

    def __init__(self, host: Host, swarm: Swarm) -> None:
        self.host = host
        self.swarm = swarm
        self.state = REGISTERED
        self.wanted: set[int] = set()
        self.inflight: dict[int, list[Flight]] = {}
        self.have = 0                       # number of pieces held
        self.out: set[Flight] = set()       # open flights this member serves
        self.alive = True
        self.fails = 0.0                    # its record as a source in this task
        self.oks = 0.0
        self.from_cdn = 0                   # its open attempts served by the CDN
        self.newcomer = False               # asked, holds nothing yet (Swarm.newcomers)

    def __repr__(self) -> str:
        return f"<Member {self.host.peer_id} {self.state} have={self.have}>"


class Flight:
    """One open assignment: ``dst`` fetches ``piece`` from ``src``."""

    __slots__ = ("dst", "src", "piece", "opened", "deadline", "live")

    def __init__(self, dst: Member, src: Member, piece: int, opened: float,
                 deadline: float) -> None:
        self.dst = dst
        self.src = src
        self.piece = piece
        self.opened = opened
        self.deadline = deadline
        self.live = True


def open_flight(dst: Member, src: Member, piece: int, opened: float,
                deadline: float) -> Flight:
    flight = Flight(dst, src, piece, opened, deadline)
    attempts = dst.inflight.get(piece)
    if attempts is None:
        dst.inflight[piece] = [flight]
    else:
        attempts.append(flight)
    src.out.add(flight)
    src.host.load += 1
    if src.host.is_cdn:
        dst.from_cdn += 1
    return flight


def _unhook(flight: Flight) -> None:
    flight.live = False
    flight.src.out.discard(flight)
    flight.src.host.load -= 1
    if flight.src.host.is_cdn:
        flight.dst.from_cdn -= 1


def close_piece(dst: Member, piece: int) -> None:
    """The piece arrived: close every attempt at it (endgame losers too)."""
    for flight in dst.inflight.pop(piece):
        _unhook(flight)


def end_flight(flight: Flight) -> bool:
    """Close one attempt that did not deliver; True if it was the last one."""
    _unhook(flight)
    attempts = flight.dst.inflight[flight.piece]
    attempts.remove(flight)
    if attempts:
        return False
    del flight.dst.inflight[flight.piece]
    return True


class Swarm:
    """One task: its state, its members and who holds which piece."""

    __slots__ = ("task_id", "state", "n", "count", "peer_count", "holders", "buckets",
                 "levels", "cdn", "cdn_has", "cdn_only", "members", "sources", "newcomers",
                 "blocked", "error", "permanent")

    def __init__(self, task_id: TaskId) -> None:
        self.task_id = task_id
        self.state = PENDING
        self.n: int | None = None           # piece count, once the origin told the length
        self.count: list[int] = []
        self.peer_count: list[int] = []
        self.holders: list[list[Member]] = []
        self.buckets: dict[int, set[int]] = {}
        self.levels: list[int] = []
        self.cdn: Member | None = None
        self.cdn_has = bytearray()
        # Pieces only the CDN holds: skipped wholesale while the CDN is busy,
        # so a decision does not burn its probes on them.
        self.cdn_only: set[int] = set()
        self.members: dict[Host, Member] = {}
        self.sources = 0                    # peer members holding at least one piece
        # Peers that asked for pieces and hold none yet. A peer that registers
        # and never asks is not one: it must not hold back the others.
        self.newcomers = 0
        self.blocked: set[Host] = set()     # hosts isolated in this task
        self.error = ""
        self.permanent = False

    def set_piece_count(self, n: int) -> None:
        self.n = n
        self.count = [0] * n
        self.peer_count = [0] * n
        self.holders = [[] for _ in range(n)]
        self.cdn_has = bytearray(n)

    def gain(self, member: Member, piece: int) -> None:
        """``member`` now holds ``piece`` (its ``have`` already counts it)."""
        if member is self.cdn:
            self.cdn_has[piece] = 1
            if not self.peer_count[piece]:
                self.cdn_only.add(piece)
        else:
            self.holders[piece].append(member)
            self.peer_count[piece] += 1
            if member.have == 1:
                self.sources += 1
                if member.newcomer:
                    member.newcomer = False
                    self.newcomers -= 1
            if self.peer_count[piece] == 1:
                self.cdn_only.discard(piece)
        self._move(piece, 1)

    def lose(self, member: Member, piece: int) -> None:
        """``member`` (already marked dead if it is leaving) no longer holds ``piece``."""
        if member is self.cdn:
            self.cdn_has[piece] = 0
            self.cdn_only.discard(piece)
        else:
            left = self.peer_count[piece] = self.peer_count[piece] - 1
            if not left and self.cdn_has[piece]:
                self.cdn_only.add(piece)
            holders = self.holders[piece]
            if len(holders) > 2 * left + 8:
                # Amortised O(1): a rebuild at least halves the list.
                self.holders[piece] = [m for m in holders if m.alive]
        self._move(piece, -1)

    def _move(self, piece: int, delta: int) -> None:
        """Move ``piece`` to the bucket of its new replica count."""
        buckets, levels = self.buckets, self.levels
        c = self.count[piece]
        if c:
            bucket = buckets[c]
            bucket.discard(piece)
            if not bucket:
                del buckets[c]
                del levels[bisect_left(levels, c)]
        c += delta
        self.count[piece] = c
        if c:
            grown = buckets.get(c)
            if grown is None:
                buckets[c] = {piece}
                insort(levels, c)
            else:
                grown.add(piece)

    def held_by(self, member: Member) -> list[int]:
        """The pieces ``member`` holds (derived: neither wanted nor in flight)."""
        if member is self.cdn:
            return [p for p in range(self.n or 0) if self.cdn_has[p]]
        wanted, inflight = member.wanted, member.inflight
        return [p for p in range(self.n or 0) if p not in wanted and p not in inflight]
