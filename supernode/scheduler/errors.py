"""Errors the scheduler core raises, as leaves of ``engine.errors``.

They all derive from ``BadInput``: each one means a caller fed the core an
event it cannot accept (an unknown peer or task, or an event that makes no
sense in the current state). The HTTP layer answers them with a 4xx, and a
peer that gets ``UnknownPeer`` registers again::

    BadInput
    ├── IllegalTransition   an event is not allowed in the current state
    ├── UnknownTask         no task with that id is scheduled here
    └── UnknownPeer         the peer is not (or no longer) registered
"""

from __future__ import annotations

from engine.errors import BadInput


class IllegalTransition(BadInput):
    """A lifecycle table has no edge for this (state, event) pair."""


class UnknownTask(BadInput):
    """No task with that id is scheduled here."""


class UnknownPeer(BadInput):
    """The peer is not registered (or was dropped for missing heartbeats)."""
