"""The scheduler core under failures: timeouts, isolation, endgame."""

from __future__ import annotations

import pytest

from engine.errors import BadInput
from supernode.scheduler import ASSIGN, DONE, WAIT, Grant, UnknownPeer
from supernode.scheduler.invariants import check
from tests.unit.schedkit import (
    CDN, A, B, C, T, U, V, make, ready, seed_peer, sources, take)


# --- failures, timeouts, isolation -------------------------------------------------------

def test_a_failed_piece_is_wanted_again(clock):
    s = make(clock)
    ready(s, T, 1)
    s.register(T, A)
    s.schedule(T, A)
    s.piece_failed(T, A, 0, CDN, "failed")
    assert s.piece_state(T, A, 0) == "missing" and s.load(CDN) == 0
    assert s.schedule(T, A).grants == (Grant(0, CDN),)
    with pytest.raises(BadInput):
        s.piece_failed(T, A, 0, CDN, "bored")


def test_corrupt_pieces_isolate_the_source_in_the_task_until_expiry(clock):
    s = make(clock, task_isolate_after=3, corrupt_weight=3, isolation_time=60,
             heartbeat_timeout=1000)
    ready(s, T, 2)
    seed_peer(s, T, A, range(2))
    s.register(T, B)
    assert sources(s.schedule(T, B, want=1)) == [A]
    piece = next(iter(s.in_flight(T, B)))
    s.piece_corrupt(T, B, piece, A)
    assert s.is_isolated(A, T) and not s.is_isolated(A)
    assert sources(s.schedule(T, B, want=2)) == [CDN, CDN]
    clock.advance(59)
    assert s.tick().reinstated == 0 and s.is_isolated(A, T)
    clock.advance(1)
    assert s.tick().reinstated == 1 and not s.is_isolated(A, T)
    s.register(T, C)
    assert sources(s.schedule(T, C, want=1)) == [A]
    check(s)


def test_failures_must_dominate_a_sources_recent_record(clock):
    s = make(clock, task_isolate_after=3, failure_ratio=0.5, health_window=32)
    ready(s, T, 100, landed=[])                     # A is the only source
    seed_peer(s, T, A, range(100))
    s.register(T, B)
    for i in range(60):                             # one transfer in four fails
        piece, source = take(s, T, B)
        if i % 4:
            s.pieces_done(T, B, [(piece, source)])
        else:
            s.piece_failed(T, B, piece, source, "failed")
    assert not s.is_isolated(A, T)
    turned = 0
    while not s.is_isolated(A, T) and turned < 30:  # then A turns bad
        s.piece_failed(T, B, take(s, T, B).piece, A, "timeout")
        turned += 1
    assert s.is_isolated(A, T) and turned < 20


def test_a_newcomer_serving_corrupt_data_is_isolated_at_once(clock):
    s = make(clock, task_isolate_after=3, corrupt_weight=3)
    ready(s, T, 2, landed=[])
    seed_peer(s, T, A, range(2))
    s.register(T, B)
    s.piece_corrupt(T, B, take(s, T, B).piece, A)
    assert s.is_isolated(A, T)


def test_refusals_are_load_not_misbehaviour(clock):
    s = make(clock, task_isolate_after=1)
    ready(s, T, 1)
    seed_peer(s, T, A, [0])
    s.register(T, B)
    s.schedule(T, B)
    s.piece_failed(T, B, 0, A, "refused")
    assert not s.is_isolated(A, T) and s.piece_state(T, B, 0) == "missing"


def test_a_source_isolated_in_enough_tasks_is_isolated_everywhere(clock):
    s = make(clock, task_isolate_after=1, host_isolate_tasks=2, isolation_time=30)
    for task in (T, U, V):
        ready(s, task, 1, landed=[] if task != V else None)
        seed_peer(s, task, A, [0])
        s.register(task, B)
    s.piece_failed(T, B, take(s, T, B).piece, A)
    assert s.is_isolated(A, T) and not s.is_isolated(A)
    s.piece_failed(U, B, take(s, U, B).piece, A)
    assert s.is_isolated(A)                         # two tasks: everywhere
    assert sources(s.schedule(V, B)) == [CDN]       # V never saw a failure from A
    clock.advance(30)
    assert s.tick().reinstated == 3
    assert not s.is_isolated(A) and not s.is_isolated(A, T)
    check(s)


def test_a_source_failing_often_is_isolated_everywhere(clock):
    s = make(clock, task_isolate_after=100, host_isolate_after=4, isolation_time=30)
    ready(s, T, 8, landed=[])
    seed_peer(s, T, A, range(8))
    s.register(T, B)
    for _ in range(4):
        s.piece_failed(T, B, take(s, T, B).piece, A)
    assert s.is_isolated(A) and s.peer_state(T, A) == "seeding"
    assert s.schedule(T, B).action == WAIT
    s.piece_available(T, 5)
    assert s.schedule(T, B).grants == (Grant(5, CDN),)


def test_isolation_survives_leaving_and_registering_again(clock):
    s = make(clock, task_isolate_after=1, isolation_time=30)
    ready(s, T, 1, landed=[])
    seed_peer(s, T, A, [0])
    s.register(T, B)
    s.piece_corrupt(T, B, take(s, T, B).piece, A)
    s.leave(A)
    seed_peer(s, T, A, [0])
    assert s.is_isolated(A, T)
    s.piece_available(T, 0)
    assert sources(s.schedule(T, B)) == [CDN]


def test_only_failures_of_open_attempts_count(clock):
    s = make(clock, task_isolate_after=1, assignment_timeout=10, heartbeat_timeout=100)
    ready(s, T, 2, landed=[])
    seed_peer(s, T, A, range(2))
    seed_peer(s, T, C, range(2))
    s.register(T, B)
    s.piece_corrupt(T, B, 0, A)                     # B never fetched from A
    assert not s.is_isolated(A, T)
    piece, source = take(s, T, B)
    clock.advance(10)
    assert s.tick().expired == 1
    s.piece_corrupt(T, B, piece, source)            # too late: expired here already
    assert not s.is_isolated(source, T)
    check(s)


def test_assignments_time_out_and_are_reassigned(clock):
    s = make(clock, assignment_timeout=10, heartbeat_timeout=100)
    ready(s, T, 1)
    seed_peer(s, T, A, [0])
    s.register(T, B)
    assert sources(s.schedule(T, B)) == [A]
    clock.advance(9)
    assert s.tick().expired == 0 and s.load(A) == 1
    clock.advance(1)
    assert s.tick().expired == 1
    assert s.load(A) == 0 and s.piece_state(T, B, 0) == "missing"
    assert not s.is_isolated(A, T)                  # the downloader may be the slow one
    assert s.schedule(T, B).action == ASSIGN
    check(s)


def test_silent_peer_is_dropped_with_its_pieces_and_its_uploads(clock):
    s = make(clock, heartbeat_timeout=30, assignment_timeout=300, cdn_upload_slots=0)
    ready(s, T, 2)
    seed_peer(s, T, A, range(2))
    s.register(T, B)
    s.schedule(T, B, want=1)                        # B fetches from A
    clock.advance(20)
    s.heartbeat(B)
    clock.advance(10)
    report = s.tick()
    assert report.dropped == (A,)
    assert s.holders(T, 0) == {CDN} and s.replicas(T, 1) == 1
    assert s.in_flight(T, B) == {} and s.load(A) == 0
    with pytest.raises(UnknownPeer):
        s.schedule(T, A)
    with pytest.raises(UnknownPeer):
        s.heartbeat(A)
    assert s.schedule(T, B).action == WAIT          # the CDN serves nobody here
    check(s)


def test_every_call_for_a_peer_counts_as_a_heartbeat(clock):
    s = make(clock, heartbeat_timeout=30)
    ready(s, T, 2)
    s.register(T, A)
    for _ in range(5):
        clock.advance(25)
        s.schedule(T, A, want=0)
        assert s.tick().dropped == ()
    clock.advance(30)
    assert s.tick().dropped == (A,)


# --- endgame -------------------------------------------------------------------

def test_endgame_duplicates_the_last_piece_from_another_source(clock):
    s = make(clock, endgame_pieces=2, endgame_copies=2, endgame_delay=5)
    ready(s, T, 3)
    seed_peer(s, T, A, range(3))
    s.register(T, B)
    s.pieces_done(T, B, [(0, None), (1, None)])
    first = s.schedule(T, B).grants
    assert [g.piece for g in first] == [2]
    clock.advance(4)
    assert s.schedule(T, B).action == WAIT          # the first attempt gets some time
    clock.advance(1)
    second = s.schedule(T, B).grants
    assert [g.piece for g in second] == [2] and second[0].source != first[0].source
    assert s.schedule(T, B).action == WAIT          # two copies at most
    assert s.load(A) == 1 and s.load(CDN) == 1
    s.pieces_done(T, B, [(2, second[0].source)])
    assert s.load(A) == 0 and s.load(CDN) == 0      # the loser's slot is freed too
    s.pieces_done(T, B, [(2, first[0].source)])     # the loser reports late: harmless
    s.piece_failed(T, B, 2, first[0].source, "failed")
    assert s.schedule(T, B).action == DONE
    check(s)


def test_no_endgame_while_pieces_are_still_wanted(clock):
    s = make(clock, endgame_pieces=4, cdn_upload_slots=1)
    ready(s, T, 3)
    seed_peer(s, T, A, [0], upload_slots=1)
    s.register(T, B)
    assert len(s.schedule(T, B, want=4).grants) == 2    # piece 0 from A, one from the CDN
    assert s.schedule(T, B).action == WAIT              # a piece is still wanted
