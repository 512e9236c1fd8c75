"""The scheduler core: events in, decisions out, no I/O.

Not thread-safe; one writer applies events one at a time. The HTTP layer
(and the simulator) call the methods below from a single thread or a single
event loop; no method blocks, sleeps or reads the wall clock.

Theory of operation. A ``Scheduler`` holds hosts (upload servers, the CDN
among them) and swarms (one per task); see ``model`` for the layout and
``registry`` for the bookkeeping. Events change them:

- ``register``, ``leave``, ``heartbeat``: peers come and go. Every call made
  on behalf of a peer counts as a heartbeat; ``tick`` drops hosts silent for
  ``heartbeat_timeout``: their pieces leave the maps and the attempts they
  were serving are released, so the pieces can be assigned elsewhere.
- ``task_known``, ``piece_available``, ``task_failed``: the CDN's progress.
  A piece is schedulable the moment it lands at the CDN.
- ``pieces_done``, ``piece_failed``: results reported by downloaders;
  failures count against the source (``health``), deliveries for it.
- ``tick``: the clock moved. Expired assignments are released, silent hosts
  dropped, due isolations lifted. Other events read the clock only to stamp
  deadlines and heartbeats, so a test that does not tick sees no expiry.
- ``schedule``: one peer asks for up to ``want`` pieces (``decide``: new
  pieces from the CDN, the rest in random order from the least-loaded
  holders, within the peer's fair share of the swarm's slots); each grant opens a flight that holds one upload slot of its source until
  the piece is reported, fails, times out, or either side leaves.

Invariants (checked by ``invariants.check`` in the tests): a grant is never
for a piece the peer holds; its source holds the piece, is healthy in the
task and host-wide, and had a free upload slot (or, for a downloader
with fewer than ``overbook_below`` attempts, at most one over); a host's ``load`` equals its
open flights over all tasks; replica counts and buckets match the holders.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from random import Random

from engine.errors import BadInput
from engine.types import PeerId, TaskId
from supernode.scheduler.config import SchedulerConfig
from supernode.scheduler.errors import UnknownPeer
from supernode.scheduler.health import Health
from supernode.scheduler.model import Host, Member
from supernode.scheduler.decide import fill, stranded
from supernode.scheduler.registry import Registry
from supernode.scheduler.results import Decision, TickReport
from supernode.scheduler.states import (
    COMPLETE_ALL, DONE, DOWNLOADING, FAIL, FAILED, FINISH, HAVE, IN_FLIGHT,
    KNOWN, LANDED, LEAVE, MISSING, PEER, PIECE, PROGRESS, REGISTER, SEEDING, TASK,
    TIMEOUT)
from supernode.scheduler.view import SchedulerView

FAILURE_REASONS = ("failed", "corrupt", "timeout", "refused")


class Scheduler(SchedulerView):
    """The supernode's scheduler: apply events, answer schedule calls.

    ``clock`` returns monotonic seconds; ``rng`` breaks every tie; ``cdn``
    names the supernode's own CDN peer, which joins every task by itself.
    """

    def __init__(self, config: SchedulerConfig | None = None, *,
                 clock: Callable[[], float], rng: Random, cdn: PeerId,
                 cdn_location: str = "", cdn_addr: str = "") -> None:
        self.config = config or SchedulerConfig()
        self._clock = clock
        self._rng = rng
        self._reg = Registry(Host(cdn, cdn_location, self.config.cdn_upload_slots,
                                  cdn_addr, is_cdn=True))
        self._health = Health(self.config)

    # --- the CDN's progress --------------------------------------------------

    def task_known(self, task: TaskId, piece_count: int) -> None:
        """The origin told the length: the task has ``piece_count`` pieces."""
        if isinstance(piece_count, bool) or not isinstance(piece_count, int) or piece_count < 0:
            raise BadInput(f"piece count must be an int >= 0, got {piece_count!r}")
        reg = self._reg
        sw = reg.swarms.get(task) or reg.new_swarm(task)
        if sw.n is not None and sw.n != piece_count:
            raise BadInput(f"task {task} has {sw.n} pieces, not {piece_count}")
        first = sw.n is None
        sw.state = TASK.next(sw.state, KNOWN)
        if not first:
            return
        sw.set_piece_count(piece_count)
        for member in sw.members.values():
            reg.arm(member)
        if piece_count == 0:
            sw.state = TASK.next(sw.state, FINISH)

    def piece_available(self, task: TaskId, piece: int) -> None:
        """``piece`` landed at the CDN and can be served from now on."""
        sw = self._reg.swarm(task)
        if sw.n is not None and 0 <= piece < sw.n and sw.cdn_has[piece]:
            return                              # told twice; nothing changes
        state = TASK.next(sw.state, LANDED)
        self._reg.check_piece(sw, piece)
        cdn = sw.cdn
        if cdn is None:
            raise BadInput(f"the CDN left task {task}; it cannot gain pieces")
        sw.state = state
        sw.gain(cdn, piece)
        cdn.have += 1
        if cdn.state != DOWNLOADING:
            cdn.state = PEER.next(cdn.state, PROGRESS)
        if cdn.have == sw.n:
            cdn.state = PEER.next(cdn.state, COMPLETE_ALL)
            sw.state = TASK.next(sw.state, FINISH)

    def task_failed(self, task: TaskId, message: str = "", *, permanent: bool = False) -> None:
        """The CDN gave up on the origin: peers go back to source, or fail if
        ``permanent``; the attempts open in the task end now."""
        sw = self._reg.swarms.get(task) or self._reg.new_swarm(task)
        sw.state = TASK.next(sw.state, FAIL)
        sw.error = message
        sw.permanent = permanent
        # Nothing more is fetched in this task: every member is told to go
        # back to the origin (or to fail) at its next call. Its open attempts
        # would otherwise hold their sources' upload slots, which those hosts
        # share with every other task they serve, until the deadline
        # (assignment_timeout).
        for member in sw.members.values():
            self._release_attempts(member)

    def forget_task(self, task: TaskId) -> None:
        """Drop a task entirely (garbage collection): every member leaves it."""
        reg = self._reg
        sw = reg.swarms.pop(task, None)
        if sw is None:
            return
        for member in list(sw.members.values()):
            reg.remove(member, LEAVE)
            reg.forget_host_if_idle(member.host)
        self._health.forget(sw)

    # --- peers -----------------------------------------------------------------

    def register(self, task: TaskId, peer: PeerId, *, location: str = "",
                 upload_slots: int | None = None, addr: str = "") -> str:
        """``peer`` joins ``task`` (or registers again). Returns its state in the task."""
        reg = self._reg
        if peer == reg.cdn.peer_id:
            raise BadInput("the CDN takes part in every task by itself")
        if upload_slots is not None and upload_slots < 0:
            raise BadInput(f"upload slots must be >= 0, got {upload_slots}")
        host = reg.hosts.get(peer)
        if host is None:
            slots = self.config.peer_upload_slots if upload_slots is None else upload_slots
            host = reg.hosts[peer] = Host(peer, location, slots, addr)
        else:
            # The latest registration describes the host. Lowering its slots
            # below its load stops new grants; the open ones run out.
            host.location = location
            if upload_slots is not None:
                host.slots = upload_slots
            if addr:
                host.addr = addr
        sw = reg.swarms.get(task) or reg.new_swarm(task)
        member = sw.members.get(host)
        if member is None:
            member = reg.join(sw, host)
        else:
            member.state = PEER.next(member.state, REGISTER)
            # A peer registers again after it lost its scheduler state (a
            # restarted worker): nobody is fetching what it was assigned
            # before, so those attempts end now instead of at their deadline.
            self._release_attempts(member)
        reg.touch(host, self._clock())
        return member.state

    def _release_attempts(self, member: Member) -> None:
        """End every open attempt of ``member``'s: its pieces are wanted again
        and their sources' slots are free."""
        for flights in list(member.inflight.values()):
            for flight in list(flights):
                self._reg.release(flight)

    def heartbeat(self, peer: PeerId) -> None:
        """``peer`` is alive, in all its tasks."""
        host = self._reg.hosts.get(peer)
        if host is None or not host.members or host.is_cdn:
            raise UnknownPeer(f"peer {peer} is not registered")
        self._reg.touch(host, self._clock())

    def leave(self, peer: PeerId, task: TaskId | None = None) -> bool:
        """``peer`` leaves ``task``, or every task. False if it was in none of them."""
        reg = self._reg
        host = reg.hosts.get(peer)
        if host is None:
            return False
        if task is None:
            members = list(host.members.values())
        else:
            member = host.members.get(task)
            members = [member] if member is not None else []
        for member in members:
            reg.remove(member, LEAVE)
        reg.forget_host_if_idle(host)
        return bool(members)

    # --- results ---------------------------------------------------------------

    def pieces_done(self, task: TaskId, peer: PeerId,
                    done: Iterable[tuple[int, PeerId | None]]) -> None:
        """``peer`` verified these pieces; each came from the given source (None: elsewhere)."""
        reg, health = self._reg, self._health
        member = reg.member(task, peer)
        sw = member.swarm
        reg.touch(member.host, self._clock())
        done = list(done)
        for piece, _ in done:                   # all or nothing: check before applying
            reg.check_piece(sw, piece)
        inflight, wanted = member.inflight, member.wanted
        for piece, source in done:
            state = IN_FLIGHT if piece in inflight else MISSING if piece in wanted else HAVE
            PIECE.next(state, DONE)
            if state == HAVE:
                continue                        # the losing endgame copy, or told twice
            if state == IN_FLIGHT:
                # Credit the source only for an attempt it was given, as
                # failures are only counted for those: a peer can neither
                # blame nor whitewash a source it never used.
                if source is not None:
                    name = source.value         # a str compare: no PeerId hashing
                    for flight in inflight[piece]:
                        if flight.src.host.peer_id.value == name:
                            health.success(sw, flight.src.host)
                            break
                reg.close_attempts(member, piece)
            else:
                wanted.discard(piece)
            member.have += 1
            sw.gain(member, piece)
            if member.state != DOWNLOADING:
                member.state = PEER.next(member.state, PROGRESS)
        if member.have == sw.n and member.state != SEEDING:
            member.state = PEER.next(member.state, COMPLETE_ALL)

    def piece_failed(self, task: TaskId, peer: PeerId, piece: int, source: PeerId,
                     reason: str = "failed") -> None:
        """``peer`` could not get ``piece`` from ``source``; ``reason`` as on the wire."""
        if reason not in FAILURE_REASONS:
            raise BadInput(f"failure reason must be one of {FAILURE_REASONS}, got {reason!r}")
        reg = self._reg
        member = reg.member(task, peer)
        sw = member.swarm
        now = self._clock()
        reg.touch(member.host, now)
        reg.check_piece(sw, piece)
        source_host = reg.hosts.get(source)
        for flight in member.inflight.get(piece, ()):
            if flight.src.host is source_host:
                reg.release(flight)
                # Only a failure of an open attempt counts against the source:
                # a late report for an attempt that expired here, or for an
                # endgame copy the downloader cancelled, says nothing about it.
                self._health.failure(sw, flight.src.host, self.config.weight(reason), now)
                return

    def piece_corrupt(self, task: TaskId, peer: PeerId, piece: int, source: PeerId) -> None:
        """``piece`` from ``source`` failed its digest at ``peer``."""
        self.piece_failed(task, peer, piece, source, "corrupt")

    # --- the clock -------------------------------------------------------------

    def tick(self) -> TickReport:
        """Apply what the passing of time implies, as of ``clock()`` now."""
        reg, now = self._reg, self._clock()
        expired = reg.expire(now)
        dropped = []
        seen, limit = reg.seen, now - self.config.heartbeat_timeout
        while seen:
            host = next(iter(seen))
            if host.last_seen > limit:
                break
            for member in list(host.members.values()):
                reg.remove(member, TIMEOUT)
            dropped.append(host.peer_id)
            reg.forget_host_if_idle(host)
        reinstated = self._health.expire(now)
        for host in reinstated:
            reg.forget_host_if_idle(host)
        return TickReport(expired, tuple(dropped), len(reinstated))

    # --- the decision ----------------------------------------------------------

    def schedule(self, task: TaskId, peer: PeerId, want: int = 4) -> Decision:
        """``peer`` asks for up to ``want`` pieces of ``task``; also a heartbeat."""
        if want < 0:
            raise BadInput(f"want must be >= 0, got {want}")
        member = self._reg.member(task, peer)
        now = self._clock()
        self._reg.touch(member.host, now)
        sw, cfg = member.swarm, self.config
        if member.state == SEEDING:
            return Decision.done()
        if sw.state == FAILED:
            message = sw.error or "the CDN could not fetch the file from the origin"
            return Decision.fail(message) if sw.permanent else Decision.back_to_source(message)
        if sw.n is None:
            return Decision.wait(cfg.pending_wait_ms, "waiting for the origin to tell the length")
        room = min(want, cfg.max_in_flight - len(member.inflight))
        grants = fill(self._reg, member, room, now, cfg, self._rng) if room > 0 else None
        if grants:
            return Decision.assign(tuple(grants))
        if not member.inflight and stranded(member):
            return Decision.back_to_source("no source can serve the missing pieces")
        # Jittered, half to one and a half times ``wait_ms``: peers that
        # started together and were all told to wait would otherwise call
        # back together, and a source freed between two such waves idles
        # until the next one (perf/sim: 10,000 peers reached full speed
        # ~0.6 s later without it).
        return Decision.wait(int(cfg.wait_ms * (0.5 + self._rng.random())))
