"""Shared by the scheduler-core tests: ids, a fake clock, and small event helpers."""

from __future__ import annotations

import random

from engine.types import PeerId, TaskId
from supernode.scheduler import Decision, Grant, Scheduler, SchedulerConfig

CDN = PeerId("cdn")
T = TaskId.of("task-one")
U = TaskId.of("task-two")
V = TaskId.of("task-three")
A, B, C, D = (PeerId(x) for x in "abcd")


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds



def make(clock: FakeClock, seed: int = 7, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), clock=clock, rng=random.Random(seed), cdn=CDN)


def ready(s: Scheduler, task: TaskId, n: int, landed=None) -> None:
    s.task_known(task, n)
    for piece in range(n) if landed is None else landed:
        s.piece_available(task, piece)


def sources(decision: Decision) -> list[PeerId]:
    return [g.source for g in decision.grants]


def take(s: Scheduler, task: TaskId, peer: PeerId) -> Grant:
    """Ask for one piece and return its grant (the test makes sure there is one)."""
    (grant,) = s.schedule(task, peer, want=1).grants
    return grant


def seed_peer(s: Scheduler, task: TaskId, peer: PeerId, pieces, **register) -> None:
    """Register ``peer`` and report ``pieces`` as fetched elsewhere."""
    s.register(task, peer, **register)
    s.pieces_done(task, peer, [(p, None) for p in pieces])
