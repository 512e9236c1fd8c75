"""What the scheduler core answers: small frozen values, no wire format.

The HTTP layer maps a ``Decision`` onto ``engine.messages.ScheduleResponse``:
``action`` is already one of ``engine.messages.ACTIONS`` and each ``Grant``
becomes an ``Assignment`` once the layer adds the source's address, the
piece size and its sha256 (which the core does not track).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from engine.errors import BadInput
from engine.types import PeerId

ASSIGN, WAIT, DONE, BACK_TO_SOURCE, FAIL = "assign", "wait", "done", "back_to_source", "fail"
ACTIONS = (ASSIGN, WAIT, DONE, BACK_TO_SOURCE, FAIL)


class Grant(NamedTuple):
    """Fetch ``piece`` from ``source``. A tuple: cheap to build on the hot path."""

    piece: int
    source: PeerId


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one schedule call.

    - ``assign``: fetch ``grants`` (at least one), then call again.
    - ``wait``: nothing to fetch now; call again after ``wait_ms``.
    - ``done``: the peer holds every piece.
    - ``back_to_source``: fetch from the origin yourself (the CDN failed, or
      no source can ever serve what you lack).
    - ``fail``: give up; the origin refused the file for good (``message``).
    """

    action: str
    grants: tuple[Grant, ...] = ()
    wait_ms: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise BadInput(f"decision action must be one of {ACTIONS}, got {self.action!r}")
        if (self.action == ASSIGN) != bool(self.grants):
            raise BadInput("an assign decision carries grants, and only it does")

    @classmethod
    def assign(cls, grants: tuple[Grant, ...]) -> Decision:
        return cls(ASSIGN, grants)

    @classmethod
    def wait(cls, wait_ms: int, message: str = "") -> Decision:
        return cls(WAIT, (), wait_ms, message)

    @classmethod
    def done(cls) -> Decision:
        return _DONE

    @classmethod
    def back_to_source(cls, message: str) -> Decision:
        return cls(BACK_TO_SOURCE, (), 0, message)

    @classmethod
    def fail(cls, message: str) -> Decision:
        return cls(FAIL, (), 0, message)


_DONE = Decision(DONE)


@dataclass(frozen=True, slots=True)
class TickReport:
    """What one clock tick changed, for logs and metrics.

    ``dropped`` lists hosts that missed their heartbeat: they left every task
    and the HTTP layer can forget their addresses.
    """

    expired: int = 0
    dropped: tuple[PeerId, ...] = ()
    reinstated: int = 0
