"""The supernode's scheduler core: sans-IO, driven by events, one writer.

Not thread-safe; one writer applies events one at a time. The HTTP layer and
the simulator feed the same ``Scheduler`` and translate its answers:

    engine.messages              scheduler core
    ---------------              --------------
    RegisterRequest          ->  register(task, peer, location=, upload_slots=, addr=)
    ScheduleRequest.results  ->  pieces_done(task, peer, [(piece, source)])
                                 piece_failed(task, peer, piece, source, reason)
    ScheduleRequest.want     ->  schedule(task, peer, want) -> Decision
    Heartbeat / Leave        ->  heartbeat(peer) / leave(peer, task)
    (CDN progress)           ->  task_known / piece_available / task_failed
    (a timer, ~1/s)          ->  tick() -> TickReport
    Decision.action          ->  ScheduleResponse.action (same five strings)
    Decision.grants          ->  Assignment(piece, source, addr(source), size, sha256)

Modules: ``states`` (the lifecycle tables), ``policy`` (pure piece and source
choice), ``model`` (the data layout), ``registry`` (bookkeeping), ``health``
(failure records and isolation), ``decide`` (one schedule decision),
``core`` (the events), ``view`` (queries), ``invariants`` (a full
consistency check for tests).
"""

from supernode.scheduler.config import SchedulerConfig
from supernode.scheduler.core import FAILURE_REASONS, Scheduler
from supernode.scheduler.errors import IllegalTransition, UnknownPeer, UnknownTask
from supernode.scheduler.results import (
    ACTIONS, ASSIGN, BACK_TO_SOURCE, DONE, FAIL, WAIT, Decision, Grant, TickReport)

__all__ = [
    "ACTIONS", "ASSIGN", "BACK_TO_SOURCE", "DONE", "FAIL", "FAILURE_REASONS", "WAIT",
    "Decision", "Grant", "IllegalTransition", "Scheduler", "SchedulerConfig",
    "TickReport", "UnknownPeer", "UnknownTask",
]
