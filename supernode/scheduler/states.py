"""Every lifecycle of the scheduler, as data: one table per kind of state.

The core never assigns a state string of its own making: it asks the table
for the next state, ``TASK.next(state, event)``, and the table raises
``IllegalTransition`` when the pair has no edge. Reading this module is
therefore enough to know every state a task, a peer, a piece or a source can
be in, and how it gets there (the h11 ``_state.py`` rule).

Task (the CDN's view of one file)::

    pending --known--> running --finish--> complete
    pending | running --fail--> failed

Peer, one per (task, host); the CDN is a member of each of its tasks too
(it makes "progress" as pieces land from the origin)::

    registered --assign/progress--> downloading --complete--> seeding
    registered --complete--> seeding          (zero-length file)
    registered | downloading | seeding --leave/timeout--> left

Piece, one per (peer, piece); "release" is the end of the *last* attempt
(endgame may run two at once; the first to finish wins)::

    missing --assign--> in_flight --done--> have
       ^                   |
       +-----release-------+          missing --done--> have (reported unasked)

Source health, one per (task, host) and one per host::

    healthy --isolate--> isolated --expire--> healthy
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from supernode.scheduler.errors import IllegalTransition


class Lifecycle:
    """A named transition table: ``next(state, event)`` or ``IllegalTransition``."""

    __slots__ = ("name", "edges", "states")

    def __init__(self, name: str, edges: dict[tuple[str, str], str]) -> None:
        self.name = name
        self.edges = MappingProxyType(dict(edges))     # read-only: the table is the spec
        self.states = frozenset(s for pair in edges for s in (pair[0], edges[pair]))

    def next(self, state: str, event: str) -> str:
        try:
            return self.edges[state, event]
        except KeyError:
            raise IllegalTransition(
                f"{self.name}: no transition from {state!r} on {event!r}") from None

    def allows(self, state: str, event: str) -> bool:
        return (state, event) in self.edges


def _from_each(states: Iterable[str], event: str, to: str) -> dict[tuple[str, str], str]:
    return {(s, event): to for s in states}


# --- task ------------------------------------------------------------------
PENDING, RUNNING, COMPLETE, FAILED = "pending", "running", "complete", "failed"
KNOWN, LANDED, FINISH, FAIL = "known", "landed", "finish", "fail"

TASK = Lifecycle("task", {
    (PENDING, KNOWN): RUNNING,     # the origin told the length
    (RUNNING, KNOWN): RUNNING,     # told again (same count; the core checks)
    (COMPLETE, KNOWN): COMPLETE,
    (RUNNING, LANDED): RUNNING,    # one more piece landed at the CDN
    (RUNNING, FINISH): COMPLETE,   # the CDN holds every piece
    (PENDING, FAIL): FAILED,
    (RUNNING, FAIL): FAILED,
    (FAILED, FAIL): FAILED,
})

# --- peer (per task) -------------------------------------------------------
REGISTERED, DOWNLOADING, SEEDING, LEFT = "registered", "downloading", "seeding", "left"
REGISTER, ASSIGN, PROGRESS, COMPLETE_ALL, LEAVE, TIMEOUT = (
    "register", "assign", "progress", "complete", "leave", "timeout")

_LIVE = (REGISTERED, DOWNLOADING, SEEDING)
PEER = Lifecycle("peer", {
    # Registering again (a restarted dfdaemon, a retried request) keeps the state.
    **{(s, REGISTER): s for s in _LIVE},
    (REGISTERED, ASSIGN): DOWNLOADING,
    (REGISTERED, PROGRESS): DOWNLOADING,   # reported a piece it fetched elsewhere
    (REGISTERED, COMPLETE_ALL): SEEDING,   # a zero-length file: nothing to fetch
    (DOWNLOADING, ASSIGN): DOWNLOADING,
    (DOWNLOADING, PROGRESS): DOWNLOADING,
    (DOWNLOADING, COMPLETE_ALL): SEEDING,
    **_from_each(_LIVE, LEAVE, LEFT),
    **_from_each(_LIVE, TIMEOUT, LEFT),    # no heartbeat within the timeout
})

# --- piece (per peer) ------------------------------------------------------
MISSING, IN_FLIGHT, HAVE = "missing", "in_flight", "have"
DONE, RELEASE = "done", "release"

PIECE = Lifecycle("piece", {
    (MISSING, ASSIGN): IN_FLIGHT,
    (IN_FLIGHT, ASSIGN): IN_FLIGHT,   # endgame duplicate from another source
    (IN_FLIGHT, DONE): HAVE,
    (IN_FLIGHT, RELEASE): MISSING,    # last attempt failed, timed out, or its source left
    (MISSING, DONE): HAVE,            # fetched without us (back-to-source, late report)
    (HAVE, DONE): HAVE,               # the losing endgame duplicate reports too
})

# --- source health (per task and per host) ---------------------------------
HEALTHY, ISOLATED = "healthy", "isolated"
STRIKE, ISOLATE, EXPIRE = "strike", "isolate", "expire"

SOURCE = Lifecycle("source", {
    (HEALTHY, STRIKE): HEALTHY,
    (HEALTHY, ISOLATE): ISOLATED,
    (ISOLATED, STRIKE): ISOLATED,     # stays isolated; expiry is not pushed back
    (ISOLATED, EXPIRE): HEALTHY,
})
