"""A peer's batch of piece results, checked before any of it is applied.

A bad batch changes nothing: the service applies a batch only once every
result in it passed. A result is refused (BadInput) when its piece is out of
range; when it reports a piece fetched from a source that was neither
granted it (supernode.ledger) nor holds it; or when it reports a piece as
the peer's own (``source`` = the reporting peer) before the CDN published the
digest it would have been verified against. The peer must be in the task
(UnknownPeer otherwise). Reads state only; no I/O.
"""

from __future__ import annotations

from engine.errors import BadInput
from engine.messages import ScheduleRequest
from engine.types import PeerId
from supernode.ledger import GrantLedger
from supernode.scheduler import Scheduler
from supernode.versions import Version

Done = list[tuple[int, PeerId | None]]
Failed = list[tuple[int, PeerId, str]]


def check_results(v: Version, req: ScheduleRequest, ledger: GrantLedger,
                  scheduler: Scheduler) -> tuple[Done, Failed]:
    """The pieces ``req`` reports done (source None: the peer's own) and failed."""
    if not req.results:
        return [], []
    scheduler.in_flight(v.id, req.peer_id)  # raises UnknownPeer if not in the task
    if v.layout is None:
        raise BadInput(f"task {v.id} has no known length yet; nothing can be reported")
    done: Done = []
    failed: Failed = []
    for r in req.results:
        if r.piece >= v.layout.count:
            raise BadInput(f"piece {r.piece} out of range (task has {v.layout.count})")
        if r.ok and r.source == req.peer_id:
            if v.digests[r.piece] is None:
                raise BadInput(f"piece {r.piece} has no published digest yet; "
                               "it cannot have been verified")
            done.append((r.piece, None))
            continue
        if (not ledger.granted(v.id, req.peer_id, r.piece, r.source)
                and r.source not in scheduler.holders(v.id, r.piece)):
            raise BadInput(f"piece {r.piece} was never assigned from {r.source}, "
                           "which does not hold it")
        if r.ok:
            done.append((r.piece, r.source))
        else:
            failed.append((r.piece, r.source, r.reason))
    return done, failed
