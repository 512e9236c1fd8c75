"""Properties of the scheduler core under random event sequences, and a swarm.

The state machine keeps its own account of who holds what (from the events
it sent), independent of the core's indexes, and checks every grant against
it: never a piece the peer holds, always from a source that holds it, is not
isolated and stays within its upload slots. After every step the core's own
indexes must agree with each other (``invariants.check``).
"""

from __future__ import annotations

import random

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from engine.types import PeerId, TaskId
from supernode.scheduler import (
    ASSIGN, BACK_TO_SOURCE, DONE, FAILURE_REASONS, Scheduler, SchedulerConfig)
from supernode.scheduler.invariants import check

CDN = PeerId("cdn")
TASKS = [TaskId.of("prop", str(i)) for i in range(2)]
PEERS = [PeerId(f"p{i}") for i in range(5)]
SLOTS = {peer: 1 + i % 3 for i, peer in enumerate(PEERS)}    # fixed per host


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(0, 2**16), n=st.integers(1, 6), landed=st.sets(st.integers(0, 5)),
                peers=st.sets(st.sampled_from(PEERS), min_size=1),
                order=st.sampled_from(["random", "rarest"]))
    def start(self, seed, n, landed, peers, order):
        self.clock = FakeClock()
        self.config = SchedulerConfig(
            peer_upload_slots=2, cdn_upload_slots=3, max_in_flight=4, task_isolate_after=2,
            host_isolate_after=4, host_isolate_tasks=2, isolation_time=20, corrupt_weight=2,
            assignment_timeout=15, heartbeat_timeout=25, endgame_pieces=6, endgame_delay=1,
            piece_order=order)
        self.s = Scheduler(self.config, clock=self.clock, rng=random.Random(seed), cdn=CDN)
        self.n: dict[TaskId, int] = {}
        self.landed: dict[TaskId, set[int]] = {t: set() for t in TASKS}
        self.cdn_gone: set[TaskId] = set()
        self.failed: set[TaskId] = set()
        self.members: set[tuple[TaskId, PeerId]] = set()
        self.have: dict[tuple[TaskId, PeerId], set[int]] = {}
        self.outstanding: list[tuple[TaskId, PeerId, int, PeerId]] = []
        # One task starts known and partly landed with a few peers; the
        # other starts empty and is driven by the rules alone.
        self.known(TASKS[0], n)
        for piece in sorted(landed):
            self.land(TASKS[0], piece)
        for peer in sorted(peers, key=str):
            self.register(TASKS[0], peer)

    # --- the CDN ---------------------------------------------------------------

    @rule(task=st.sampled_from(TASKS), n=st.integers(0, 6))
    def known(self, task, n):
        if task in self.n or task in self.failed:
            return
        self.s.task_known(task, n)
        self.n[task] = n

    @rule(task=st.sampled_from(TASKS), piece=st.integers(0, 5))
    def land(self, task, piece):
        if (task in self.n and piece < self.n[task] and task not in self.cdn_gone
                and task not in self.failed):
            self.s.piece_available(task, piece)
            self.landed[task].add(piece)

    # The two rules that end a task's CDN act one time in ten, or few
    # sequences would get far enough to assign anything.
    @rule(task=st.sampled_from(TASKS), dice=st.integers(0, 19))
    def cdn_leaves(self, task, dice):
        if dice == 19 and self.s.leave(CDN, task):
            self.cdn_gone.add(task)
            self.landed[task].clear()

    @rule(task=st.sampled_from(TASKS), dice=st.integers(0, 19))
    def cdn_fails(self, task, dice):
        if dice == 19 and task in self.s.tasks() and self.s.task_state(task) in (
                "pending", "running"):
            self.s.task_failed(task, "origin broke")
            self.failed.add(task)

    # --- peers -----------------------------------------------------------------

    @rule(task=st.sampled_from(TASKS), peer=st.sampled_from(PEERS))
    def register(self, task, peer):
        self.s.register(task, peer, upload_slots=SLOTS[peer])
        if (task, peer) not in self.members:
            self.members.add((task, peer))
            self.have[task, peer] = set()

    @rule(peer=st.sampled_from(PEERS), task=st.one_of(st.none(), st.sampled_from(TASKS)))
    def leave(self, peer, task):
        self.s.leave(peer, task)
        self._gone(peer, task)

    @rule(peer=st.sampled_from(PEERS))
    def heartbeat(self, peer):
        if any(p == peer for _, p in self.members):
            self.s.heartbeat(peer)

    @rule(seconds=st.sampled_from([0.5, 1, 2, 5, 20]))
    def tick(self, seconds):
        self.clock.now += seconds
        for peer in self.s.tick().dropped:
            self._gone(peer, None)

    def _gone(self, peer, task):
        for key in [k for k in self.members if k[1] == peer and task in (None, k[0])]:
            self.members.discard(key)
            del self.have[key]
        self.outstanding = [o for o in self.outstanding
                            if not (o[1] == peer and task in (None, o[0]))]

    # --- schedule and results ------------------------------------------------------

    @precondition(lambda self: self.members)
    @rule(data=st.data(), want=st.integers(0, 5))
    def schedule(self, data, want):
        self._schedule(*data.draw(st.sampled_from(sorted(self.members, key=str))), want)

    @precondition(lambda self: self.members)
    @rule(want=st.integers(1, 3), seconds=st.sampled_from([0, 0, 1.5]))
    def every_peer_asks(self, want, seconds):
        self.clock.now += seconds               # time passes between calls, unticked
        for task, peer in sorted(self.members, key=str):
            self._schedule(task, peer, want)

    def _schedule(self, task, peer, want):
        decision = self.s.schedule(task, peer, want)
        if decision.action == DONE:
            assert self.have[task, peer] == set(range(self.n[task]))
        if decision.action == BACK_TO_SOURCE:
            assert (task in self.failed or task in self.cdn_gone
                    or self.s.is_isolated(CDN, task))
        if decision.action != ASSIGN:
            return
        assert len(decision.grants) <= want
        assert len({g.piece for g in decision.grants}) == len(decision.grants)
        for piece, source in decision.grants:
            assert piece not in self.have[task, peer], "assigned a piece the peer holds"
            if source == CDN:
                assert piece in self.landed[task], "the CDN does not hold that piece"
            else:
                assert (task, source) in self.members, "the source is not in the task"
                assert piece in self.have[task, source], "the source lacks the piece"
            assert not self.s.is_isolated(source, task), "assigned from an isolated source"
            # Overbooking: a starved downloader may take one slot over the limit
            # of a source that serves at all.
            slots = self.s.upload_slots(source)
            assert self.s.load(source) <= slots + (slots > 0), "upload slots exceeded"
            self.outstanding.append((task, peer, piece, source))

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def complete(self, data):
        task, peer, piece, source = self.outstanding.pop(
            data.draw(st.integers(0, len(self.outstanding) - 1)))
        self.s.pieces_done(task, peer, [(piece, source)])
        self.have[task, peer].add(piece)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data())
    def complete_all_but_one(self, data):
        """Every transfer but one lands: the straggler is what endgame is for."""
        keep = self.outstanding.pop(data.draw(st.integers(0, len(self.outstanding) - 1)))
        while self.outstanding:
            task, peer, piece, source = self.outstanding.pop()
            self.s.pieces_done(task, peer, [(piece, source)])
            self.have[task, peer].add(piece)
        self.outstanding.append(keep)

    @precondition(lambda self: self.outstanding)
    @rule(data=st.data(), reason=st.sampled_from(FAILURE_REASONS + ("failed", "refused")))
    def fail(self, data, reason):
        task, peer, piece, source = self.outstanding.pop(
            data.draw(st.integers(0, len(self.outstanding) - 1)))
        self.s.piece_failed(task, peer, piece, source, reason)

    @invariant()
    def consistent(self):
        if hasattr(self, "s"):
            check(self.s)
            for task, peer in self.members:
                held = {p for p in range(self.n.get(task, 0))
                        if self.s.piece_state(task, peer, p) == "have"}
                assert held == self.have[task, peer]


SchedulerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=80, deadline=None)
TestSchedulerMachine = SchedulerMachine.TestCase


# --- a whole swarm -------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(4))
def test_swarm_with_failures_and_a_corrupt_peer_finishes(seed):
    """1 CDN gaining pieces + 20 peers, 30 pieces. 10 % of transfers fail, one
    in five is slow (three steps), and one peer serves nothing but corrupt
    pieces. Everyone must finish, and the liar must end up isolated."""
    rng = random.Random(seed)
    clock = FakeClock()
    s = Scheduler(SchedulerConfig(endgame_delay=1), clock=clock, rng=random.Random(seed),
                  cdn=CDN)
    task, pieces = TASKS[0], 30
    peers = [PeerId(f"peer-{i}") for i in range(20)]
    liar = peers[0]
    s.task_known(task, pieces)
    for i, peer in enumerate(peers):
        s.register(task, peer, location=f"rack-{i % 3}")
    landed = 0
    transfers: dict[PeerId, list[tuple[int, int, PeerId]]] = {p: [] for p in peers}
    unfinished = set(peers)
    duplicates = 0
    for step in range(1, 121):
        clock.now += 1.0
        for piece in range(landed, min(pieces, landed + 3)):
            s.piece_available(task, piece)       # the origin download progresses
        landed = min(pieces, landed + 3)
        s.tick()
        for peer in sorted(unfinished, key=lambda _: rng.random()):
            done = []
            due = [t for t in transfers[peer] if t[0] <= step]
            transfers[peer] = [t for t in transfers[peer] if t[0] > step]
            for _, piece, source in due:
                if source == liar:
                    s.piece_corrupt(task, peer, piece, source)
                elif rng.random() < 0.1:
                    s.piece_failed(task, peer, piece, source, rng.choice(["failed", "timeout"]))
                else:
                    done.append((piece, source))
            s.pieces_done(task, peer, done)
            decision = s.schedule(task, peer, 4)
            assert decision.action in (ASSIGN, "wait", DONE), decision
            if decision.action == ASSIGN:
                busy = {piece for _, piece, _ in transfers[peer]}
                duplicates += sum(g.piece in busy for g in decision.grants)
                transfers[peer] += [(step + (3 if rng.random() < 0.2 else 1), *g)
                                    for g in decision.grants]
            elif decision.action == DONE:
                unfinished.discard(peer)
        if step % 10 == 0:
            check(s)
        if not unfinished:
            break
    assert not unfinished, f"{len(unfinished)} peers unfinished after {step} steps"
    assert step <= 40, f"took {step} steps"
    assert s.is_isolated(liar, task)
    assert duplicates > 0                        # the endgame did happen
    check(s)
