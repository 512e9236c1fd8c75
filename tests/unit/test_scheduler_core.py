"""The scheduler core fed events by hand, with a fake clock and a seeded RNG."""

from __future__ import annotations

import pytest

from engine.errors import BadInput, ConfigError
from engine.types import PeerId
from supernode.scheduler import (
    ASSIGN, BACK_TO_SOURCE, DONE, FAIL, WAIT, Decision, Grant, IllegalTransition,
    SchedulerConfig, UnknownPeer, UnknownTask)
from supernode.scheduler.invariants import check
from tests.unit.schedkit import (
    CDN, FakeClock, A, B, C, D, T, U, make, ready, seed_peer, sources, take)


# --- tasks and the CDN -------------------------------------------------------------

def test_peers_wait_until_the_length_is_known(clock):
    s = make(clock)
    assert s.register(T, A) == "registered"
    decision = s.schedule(T, A)
    assert decision.action == WAIT and decision.wait_ms == SchedulerConfig().pending_wait_ms
    assert s.task_state(T) == "pending"
    ready(s, T, 4)
    assert s.task_state(T) == "complete"
    decision = s.schedule(T, A, want=8)
    assert decision.action == ASSIGN and sorted(g.piece for g in decision.grants) == [0, 1, 2, 3]
    check(s)


def test_each_piece_is_schedulable_the_moment_it_lands(clock):
    s = make(clock)
    s.register(T, A)
    s.task_known(T, 10)
    assert s.schedule(T, A).action == WAIT          # running, but nothing landed yet
    s.piece_available(T, 6)
    assert s.schedule(T, A).grants == (Grant(6, CDN),)
    s.piece_available(T, 6)                         # told twice: no change
    s.piece_available(T, 2)
    assert s.schedule(T, A).grants == (Grant(2, CDN),)
    assert s.task_state(T) == "running"
    assert s.peer_state(T, CDN) == "downloading"
    check(s)


def test_zero_length_file_is_done_at_once(clock):
    s = make(clock)
    s.register(T, A)
    s.task_known(T, 0)
    assert s.task_state(T) == "complete" and s.peer_state(T, A) == "seeding"
    assert s.schedule(T, A).action == DONE
    s.register(T, B)
    assert s.schedule(T, B).action == DONE


def test_cdn_failure_sends_peers_back_to_source_or_fails_them(clock):
    s = make(clock)
    s.register(T, A)
    s.task_failed(T, "origin reset the connection")
    decision = s.schedule(T, A)
    assert decision.action == BACK_TO_SOURCE and "reset" in decision.message
    s.register(U, A)
    s.task_failed(U, "origin said 404", permanent=True)
    assert s.schedule(U, A).action == FAIL


def test_a_failed_task_frees_the_upload_slots_its_attempts_held(clock):
    s = make(clock, cdn_upload_slots=0)           # every grant is from A
    ready(s, T, 3, landed=[0, 1])                 # the CDN fails before piece 2
    seed_peer(s, T, A, [0, 1])
    seed_peer(s, U, A, [])
    s.register(T, B)
    grant = take(s, T, B)
    assert grant.source == A and s.load(A) == 1
    s.task_failed(T, "origin reset the connection")
    # A's slots serve its other tasks now, not after assignment_timeout.
    assert s.load(A) == 0 and s.in_flight(T, B) == {}
    check(s)
    assert s.schedule(T, B).action == BACK_TO_SOURCE
    s.pieces_done(T, B, [(grant.piece, A)])       # a fetch that ended after the failure
    assert s.piece_state(T, B, grant.piece) == "have"
    check(s)


def test_task_known_twice_must_agree(clock):
    s = make(clock)
    s.task_known(T, 5)
    s.task_known(T, 5)
    with pytest.raises(BadInput):
        s.task_known(T, 6)
    with pytest.raises(BadInput):
        s.task_known(U, -1)


def test_complete_task_is_announced_when_the_cdn_has_everything(clock):
    s = make(clock)
    ready(s, T, 3, landed=[0, 1])
    assert s.task_state(T) == "running"
    s.piece_available(T, 2)
    assert s.task_state(T) == "complete" and s.peer_state(T, CDN) == "seeding"
    with pytest.raises(IllegalTransition):
        s.task_failed(T, "too late")


# --- a peer's download ---------------------------------------------------------------

def test_a_peer_downloads_everything_and_seeds(clock):
    s = make(clock)
    ready(s, T, 6)
    s.register(T, A)
    for _ in range(3):
        decision = s.schedule(T, A, want=2)
        assert decision.action == ASSIGN and s.peer_state(T, A) == "downloading"
        for g in decision.grants:
            assert s.piece_state(T, A, g.piece) == "in_flight"
        s.pieces_done(T, A, decision.grants)
        check(s)
    assert s.peer_state(T, A) == "seeding"
    assert s.schedule(T, A).action == DONE
    assert all(s.holders(T, p) == {A, CDN} for p in range(6))


def test_a_second_peer_fetches_from_the_first_not_the_cdn(clock):
    s = make(clock)
    ready(s, T, 4)
    seed_peer(s, T, A, range(4))
    s.register(T, B)
    decision = s.schedule(T, B, want=1)
    assert sources(decision) == [A]
    assert s.load(A) == 1 and s.load(CDN) == 0


def test_pieces_of_one_request_come_from_different_sources(clock):
    s = make(clock)
    ready(s, T, 4)
    seed_peer(s, T, A, range(4))
    seed_peer(s, T, B, range(4))
    s.register(T, C)
    decision = s.schedule(T, C, want=3)
    # Two peers and the CDN hold everything: three grants, three sources.
    assert sorted(map(str, sources(decision))) == ["a", "b", "cdn"]


def test_one_source_serves_a_whole_request_when_it_is_the_only_one(clock):
    s = make(clock)
    ready(s, T, 4)
    s.register(T, A)
    assert sources(s.schedule(T, A, want=4)) == [CDN] * 4


def test_rarest_pieces_go_first(clock):
    s = make(clock, piece_order="rarest")
    ready(s, T, 4)
    seed_peer(s, T, A, [0, 1, 2])
    seed_peer(s, T, B, [0, 1])
    s.register(T, C)
    assert [g.piece for g in s.schedule(T, C, want=2).grants] == [3, 2]


def test_same_location_peer_is_preferred(clock):
    s = make(clock)
    ready(s, T, 1)
    seed_peer(s, T, A, [0], location="rack-1")
    seed_peer(s, T, B, [0], location="rack-2")
    s.register(T, C, location="rack-2")
    s.register(T, D, location="rack-1")
    assert sources(s.schedule(T, C, want=1)) == [B]
    assert sources(s.schedule(T, D, want=1)) == [A]


def test_upload_slots_are_shared_by_all_tasks_of_a_host(clock):
    s = make(clock, cdn_upload_slots=0)             # only peers serve here
    for task in (T, U):
        ready(s, task, 2)
        seed_peer(s, task, A, range(2), upload_slots=1)
        s.register(task, B)
    piece, source = take(s, T, B)
    assert source == A and s.load(A) == 1
    assert s.schedule(U, B).action == WAIT          # A's one slot is taken by task T
    s.pieces_done(T, B, [(piece, A)])
    assert sources(s.schedule(U, B)) == [A]


def test_in_flight_per_downloader_is_capped(clock):
    s = make(clock, max_in_flight=3)
    ready(s, T, 10)
    s.register(T, A)
    assert len(s.schedule(T, A, want=8).grants) == 3
    assert s.schedule(T, A, want=8).action == WAIT
    assert s.schedule(T, A, want=0).action == WAIT


def test_busy_cdn_does_not_hide_pieces_peers_can_serve(clock):
    s = make(clock, cdn_upload_slots=1, max_probes=1)
    ready(s, T, 40)
    seed_peer(s, T, A, [39])                        # 39 pieces are held by the CDN alone
    s.register(T, B)
    s.register(T, C)
    assert sources(s.schedule(T, B, want=1)) == [CDN]   # rarest: a CDN-only piece
    assert s.load(CDN) == 1
    # The CDN is full. C must still find piece 39 at A although 39 rarer
    # pieces come first and only one probe may fail.
    assert s.schedule(T, C, want=1).grants == (Grant(39, A),)


def test_reported_pieces_without_an_assignment_are_accepted(clock):
    s = make(clock)
    ready(s, T, 3)
    s.register(T, A)
    s.pieces_done(T, A, [(1, None)])
    assert s.piece_state(T, A, 1) == "have" and s.peer_state(T, A) == "downloading"
    s.pieces_done(T, A, [(1, None)])                # told twice: no change
    assert s.replicas(T, 1) == 2
    check(s)


# --- stranded peers, leaving, errors ---------------------------------------------------

def test_back_to_source_when_nobody_can_ever_serve_a_piece(clock):
    s = make(clock, task_isolate_after=1)
    ready(s, T, 2, landed=[0])
    s.register(T, A)
    s.schedule(T, A)
    s.piece_corrupt(T, A, 0, CDN)                   # the CDN is out of this task
    assert s.schedule(T, A).action == BACK_TO_SOURCE


def test_cdn_leaving_a_task_strands_pieces_only_it_had(clock):
    s = make(clock)
    ready(s, T, 2)
    seed_peer(s, T, A, [0])
    s.register(T, B)
    assert s.leave(CDN, T)
    assert s.holders(T, 1) == frozenset()
    decision = s.schedule(T, B, want=4)
    assert decision.grants == (Grant(0, A),)
    s.pieces_done(T, B, decision.grants)
    assert s.schedule(T, B).action == BACK_TO_SOURCE
    check(s)


def test_leaving_releases_everything(clock):
    s = make(clock)
    ready(s, T, 4)
    ready(s, U, 4)
    seed_peer(s, T, A, range(4))
    seed_peer(s, U, A, range(2))
    s.register(T, B)
    s.schedule(T, B, want=4)
    assert s.leave(A, T)
    assert s.peers(T) == [B] and s.peers(U) == [A]
    assert all(A not in s.holders(T, p) for p in range(4))
    assert s.leave(A) and not s.leave(A) and not s.leave(PeerId("nobody"))
    assert s.leave(B)
    assert s.load(CDN) == 0 and s.stats()["open_flights"] == 0
    check(s)


def test_forgetting_a_task(clock):
    s = make(clock, task_isolate_after=1)
    ready(s, T, 2, landed=[])
    seed_peer(s, T, A, range(2))
    s.register(T, B)
    s.piece_failed(T, B, take(s, T, B).piece, A)
    assert s.is_isolated(A, T)
    s.schedule(T, B)
    s.forget_task(T)
    s.forget_task(T)
    assert s.tasks() == [] and s.load(A) == 0 and not s.is_isolated(A)
    with pytest.raises(UnknownTask):
        s.schedule(T, B)
    check(s)


def test_registering_again_keeps_progress_and_updates_the_host(clock):
    s = make(clock)
    ready(s, T, 2)
    seed_peer(s, T, A, [0])
    assert s.register(T, A, upload_slots=3, location="rack-9", addr="10.0.0.1:80") == "downloading"
    assert s.upload_slots(A) == 3 and s.addr(A) == "10.0.0.1:80"
    assert s.piece_state(T, A, 0) == "have"


def test_bad_events_are_refused_clearly(clock):
    s = make(clock)
    with pytest.raises(UnknownTask):
        s.schedule(T, A)
    s.register(T, A)
    with pytest.raises(UnknownPeer):
        s.schedule(T, B)
    with pytest.raises(IllegalTransition):
        s.piece_available(T, 0)                     # length not known yet
    with pytest.raises(BadInput):
        s.pieces_done(T, A, [(0, None)])
    ready(s, T, 2)
    with pytest.raises(BadInput):
        s.pieces_done(T, A, [(2, None)])
    with pytest.raises(BadInput):
        s.schedule(T, A, want=-1)
    with pytest.raises(BadInput):
        s.register(T, CDN)
    with pytest.raises(BadInput):
        s.register(T, B, upload_slots=-1)
    with pytest.raises(UnknownPeer):
        s.schedule(T, CDN)


def test_same_seed_same_decisions(clock):
    def run(seed: int) -> list:
        s = make(FakeClock(), seed=seed)
        ready(s, T, 64)
        out = []
        for i in range(6):
            s.register(T, PeerId(f"p{i}"))
            out.append(s.schedule(T, PeerId(f"p{i}"), want=4).grants)
        return out
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_config_and_decisions_validate():
    with pytest.raises(ConfigError):
        SchedulerConfig(peer_upload_slots=-1)
    with pytest.raises(ConfigError):
        SchedulerConfig(assignment_timeout=0)
    with pytest.raises(ConfigError):
        SchedulerConfig(source_sample=0)
    with pytest.raises(ConfigError):
        SchedulerConfig(wait_ms="soon")
    with pytest.raises(BadInput):
        Decision("assign")
    with pytest.raises(BadInput):
        Decision("teleport")
    assert Decision.done().action == DONE


def test_the_cdn_does_not_send_a_piece_it_is_already_sending(clock):
    s = make(clock)
    ready(s, T, 4)
    for peer in (A, B):
        s.register(T, peer)
    first = {g.piece for g in s.schedule(T, A, want=2).grants}
    second = {g.piece for g in s.schedule(T, B, want=4).grants}
    # B gets the two pieces nobody is fetching, not A's pieces a second time.
    assert len(first) == 2 and second == {0, 1, 2, 3} - first
    check(s)


def test_a_piece_in_flight_from_the_cdn_is_still_granted_to_an_idle_peer(clock):
    s = make(clock)
    ready(s, T, 2)
    for peer in (A, B):
        s.register(T, peer)
    assert len(s.schedule(T, A, want=2).grants) == 2
    decision = s.schedule(T, B, want=2)  # nothing else exists: B must not starve
    assert decision.action == ASSIGN and sources(decision) == [CDN, CDN]
    check(s)


def test_registering_again_releases_the_peers_open_attempts(clock):
    s = make(clock)
    ready(s, T, 4)
    s.register(T, A)
    granted = {g.piece for g in s.schedule(T, A, want=2).grants}
    assert len(granted) == 2 and s.load(CDN) == 2
    s.register(T, A)  # e.g. its worker was restarted and lost the attempts
    assert s.in_flight(T, A) == {} and s.load(CDN) == 0
    again = s.schedule(T, A, want=4)  # the released pieces are wanted again
    assert {g.piece for g in again.grants} == {0, 1, 2, 3}
    check(s)
