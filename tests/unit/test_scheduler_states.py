"""The scheduler's lifecycle tables: every legal edge, and refusals for the rest."""

from __future__ import annotations

import itertools

import pytest

from engine import messages
from engine.errors import BadInput
from supernode import scheduler
from supernode.scheduler import states as s
from supernode.scheduler.errors import IllegalTransition

TABLES = [s.TASK, s.PEER, s.PIECE, s.SOURCE]


@pytest.mark.parametrize("table,state,event,to", [
    (s.TASK, s.PENDING, s.KNOWN, s.RUNNING),
    (s.TASK, s.RUNNING, s.LANDED, s.RUNNING),
    (s.TASK, s.RUNNING, s.FINISH, s.COMPLETE),
    (s.TASK, s.PENDING, s.FAIL, s.FAILED),
    (s.TASK, s.RUNNING, s.FAIL, s.FAILED),
    (s.PEER, s.REGISTERED, s.ASSIGN, s.DOWNLOADING),
    (s.PEER, s.REGISTERED, s.PROGRESS, s.DOWNLOADING),
    (s.PEER, s.DOWNLOADING, s.COMPLETE_ALL, s.SEEDING),
    (s.PEER, s.REGISTERED, s.COMPLETE_ALL, s.SEEDING),
    (s.PEER, s.SEEDING, s.REGISTER, s.SEEDING),
    (s.PEER, s.DOWNLOADING, s.LEAVE, s.LEFT),
    (s.PEER, s.SEEDING, s.TIMEOUT, s.LEFT),
    (s.PIECE, s.MISSING, s.ASSIGN, s.IN_FLIGHT),
    (s.PIECE, s.IN_FLIGHT, s.ASSIGN, s.IN_FLIGHT),
    (s.PIECE, s.IN_FLIGHT, s.DONE, s.HAVE),
    (s.PIECE, s.IN_FLIGHT, s.RELEASE, s.MISSING),
    (s.PIECE, s.MISSING, s.DONE, s.HAVE),
    (s.PIECE, s.HAVE, s.DONE, s.HAVE),
    (s.SOURCE, s.HEALTHY, s.ISOLATE, s.ISOLATED),
    (s.SOURCE, s.ISOLATED, s.EXPIRE, s.HEALTHY),
])
def test_legal_transitions(table, state, event, to):
    assert table.allows(state, event)
    assert table.next(state, event) == to


@pytest.mark.parametrize("table,state,event", [
    (s.TASK, s.COMPLETE, s.FAIL),        # a finished task cannot fail afterwards
    (s.TASK, s.FAILED, s.KNOWN),
    (s.TASK, s.PENDING, s.LANDED),       # no piece before the length is known
    (s.TASK, s.COMPLETE, s.LANDED),
    (s.PEER, s.SEEDING, s.ASSIGN),       # a seeder is never given work
    (s.PEER, s.LEFT, s.REGISTER),        # a new registration is a new member
    (s.PEER, s.LEFT, s.LEAVE),
    (s.PEER, s.SEEDING, s.PROGRESS),
    (s.PIECE, s.HAVE, s.ASSIGN),         # never assign a piece the peer holds
    (s.PIECE, s.MISSING, s.RELEASE),
    (s.PIECE, s.HAVE, s.RELEASE),
    (s.SOURCE, s.HEALTHY, s.EXPIRE),
    (s.SOURCE, s.ISOLATED, s.ISOLATE),
])
def test_illegal_transitions_raise(table, state, event):
    assert not table.allows(state, event)
    with pytest.raises(IllegalTransition) as info:
        table.next(state, event)
    assert table.name in str(info.value) and state in str(info.value)
    assert isinstance(info.value, BadInput)


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_every_pair_is_either_an_edge_or_refused(table):
    events = {event for _, event in table.edges}
    for state, event in itertools.product(table.states, events):
        if (state, event) in table.edges:
            assert table.next(state, event) in table.states
        else:
            with pytest.raises(IllegalTransition):
                table.next(state, event)


def test_terminal_states_have_no_way_out():
    assert not any(state == s.LEFT for state, _ in s.PEER.edges)
    assert not any(state in (s.COMPLETE, s.FAILED) and to not in (s.COMPLETE, s.FAILED)
                   for (state, _), to in s.TASK.edges.items())


def test_core_speaks_the_wire_vocabulary():
    # The HTTP layer maps these one to one; a drift would break it silently.
    assert scheduler.ACTIONS == messages.ACTIONS
    assert scheduler.FAILURE_REASONS == messages.FAILURE_REASONS
    assert {s.PENDING, s.RUNNING, s.COMPLETE, s.FAILED} == s.TASK.states
