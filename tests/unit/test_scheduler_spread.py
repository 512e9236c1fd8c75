"""How the scheduler spreads a file: CDN super-seeding, CDN and swarm fair shares, jitter."""

from __future__ import annotations

from collections import Counter

from engine.types import PeerId
from supernode.scheduler import ASSIGN, WAIT, SchedulerConfig
from supernode.scheduler.invariants import check
from tests.unit.schedkit import CDN, A, B, C, T, make, ready, seed_peer, sources


def test_the_cdn_sends_a_piece_no_peer_holds_even_when_peers_could_serve(clock):
    s = make(clock)
    ready(s, T, 20)
    seed_peer(s, T, A, range(19))               # A holds all but piece 19, and is idle
    s.register(T, B)
    decision = s.schedule(T, B, want=4)
    assert (19, CDN) in {(g.piece, g.source) for g in decision.grants}
    assert sources(decision).count(CDN) == 1    # the rest comes from A
    check(s)


def test_the_cdn_sends_a_fresh_piece_first_when_peers_are_busy(clock):
    s = make(clock)
    ready(s, T, 12)
    seed_peer(s, T, A, range(10), upload_slots=0)    # holds 0-9, serves nobody
    seed_peer(s, T, B, range(11), upload_slots=0)    # holds 0-10, serves nobody
    s.register(T, C)
    # Piece 11 is the only one no peer holds.
    assert [g.piece for g in s.schedule(T, C, want=1).grants] == [11]
    check(s)


def test_the_cdn_serves_each_downloader_its_share_of_its_slots(clock):
    s = make(clock, cdn_upload_slots=4)
    ready(s, T, 16)
    peers = [PeerId(f"p{i}") for i in range(4)]
    for p in peers:
        s.register(T, p)
    # Four slots, four peers: one CDN piece each, not four for the first asker.
    for p in peers:
        decision = s.schedule(T, p, want=4)
        assert sources(decision) == [CDN]
    check(s)


def test_a_lone_peer_gets_its_whole_request_from_the_cdn(clock):
    s = make(clock, cdn_upload_slots=8)
    ready(s, T, 16)
    s.register(T, A)
    assert sources(s.schedule(T, A, want=4)) == [CDN] * 4


def test_newcomers_come_before_peers_that_already_hold_pieces(clock):
    # Fair shares alone: no spread cap, no overbooking.
    s = make(clock, cdn_upload_slots=0, peer_upload_slots=4, spread_slots=0,
             overbook_below=0)
    ready(s, T, 8)
    seed_peer(s, T, A, range(8))                # the only real source: 4 slots
    seed_peer(s, T, B, [0], upload_slots=0)
    newcomers = [PeerId(f"n{i}") for i in range(6)]
    for p in newcomers:
        s.register(T, p)
    # Registered but silent, they hold nobody back: B gets what it asks for.
    assert len(s.schedule(T, B, want=2).grants) == 2
    first = {}
    for p in newcomers:
        decision = s.schedule(T, p, want=4)
        if decision.action == ASSIGN:
            (first[p],) = decision.grants       # one piece however much it asks for
    assert len(first) == 2                      # then A's four slots are taken
    n0 = next(iter(first))
    s.pieces_done(T, n0, [(first[n0].piece, A)])
    # A has a free slot again. Nominal slots 3 x 4 = 12, five newcomers
    # asking: B's share is (12 - 5) // 3 = 2, which its two attempts fill,
    # so the slot goes to a newcomer.
    assert s.schedule(T, B, want=4).action == WAIT
    waiting = [p for p in newcomers if p not in first]
    assert sources(s.schedule(T, waiting[0], want=4)) == [A]
    check(s)


def test_once_everyone_holds_something_the_share_does_not_bind(clock):
    s = make(clock, peer_upload_slots=4)
    ready(s, T, 16)
    seed_peer(s, T, A, [0])
    seed_peer(s, T, B, range(16))
    seed_peer(s, T, C, range(16))
    got = sources(s.schedule(T, A, want=4))
    assert len(got) == 4 and set(got) == {B, C, CDN}


def test_wait_hints_are_jittered_around_wait_ms_and_reproducible(clock):
    def hints(seed: int) -> list[int]:
        s = make(clock, seed=seed, wait_ms=200, cdn_upload_slots=0)
        ready(s, T, 1)
        s.register(T, A)
        return [s.schedule(T, A).wait_ms for _ in range(50)]

    got = hints(3)
    assert all(100 <= w < 300 for w in got)
    assert len(set(got)) > 10                   # spread, not one value
    assert hints(3) == got


def test_config_defaults_match_a_dfdaemon_with_parallel_four():
    cfg = SchedulerConfig()
    assert (cfg.peer_upload_slots, cfg.cdn_upload_slots) == (4, 8)



def _young_swarm(clock, newcomers: int, cdn_slots: int):
    """A: the only peer source (4 slots), holding everything; ``newcomers``
    peers that hold nothing and ask for four pieces each, in turn."""
    s = make(clock, cdn_upload_slots=cdn_slots, peer_upload_slots=4, overbook_below=0)
    ready(s, T, 16)
    seed_peer(s, T, A, range(16))
    got = []
    for i in range(newcomers):
        s.register(T, PeerId(f"n{i}"))
    for i in range(newcomers):
        got += sources(s.schedule(T, PeerId(f"n{i}"), want=4))
    check(s)
    return s, Counter(got)


def test_a_young_swarm_sends_first_pieces_one_at_a_time_per_source(clock):
    s, got = _young_swarm(clock, 6, cdn_slots=2)
    # A serves one transfer, the CDN two (``cdn_spread_slots``), each at full
    # speed; the other newcomers wait for the first receivers to pass them on.
    assert got == {A: 1, CDN: 2}


def _tail_of_the_spread(clock, tail: int) -> list[PeerId]:
    """100 peer sources, each holding one piece of 16, and three newcomers
    that asked (CDN 2 slots): where a source's request for four pieces goes."""
    s = make(clock, cdn_upload_slots=2, peer_upload_slots=4, overbook_below=0,
             spread_tail=tail)
    ready(s, T, 16)
    holders = [PeerId(f"h{i}") for i in range(100)]
    for i, p in enumerate(holders):
        seed_peer(s, T, p, [i % 16])
    for i in range(3):
        s.register(T, PeerId(f"new{i}"))
        assert sources(s.schedule(T, PeerId(f"new{i}"), want=4))
    got = sources(s.schedule(T, holders[0], want=4))
    check(s)
    return got


def test_the_cap_ends_once_the_newcomers_are_few_against_the_sources(clock):
    # 3 newcomers x 32 < 100 sources: the cap is gone, and a peer that holds
    # a piece gets its share ((100 x 4 + 2 - 3 x 3) // 100 = 3 attempts) while
    # the last newcomers get their first.
    got = _tail_of_the_spread(clock, 32)
    assert len(got) == 3 and CDN not in got
    # spread_tail 0: the cap and the newcomers' priority last to the end
    # (a share of (100 + 2 - 3) // 100 = 0).
    assert _tail_of_the_spread(clock, 0) == []


def test_a_swarm_no_larger_than_the_cdns_slots_is_not_capped(clock):
    s, got = _young_swarm(clock, 3, cdn_slots=8)
    assert got[A] > 1 and sum(got.values()) > 3


def test_a_starved_downloader_may_take_one_slot_over_a_full_source(clock):
    s = make(clock, cdn_upload_slots=0, peer_upload_slots=4, spread_slots=0,
             overbook_below=4)
    ready(s, T, 16)
    seed_peer(s, T, A, range(16))
    seed_peer(s, T, B, [0])
    seed_peer(s, T, C, [1])
    assert sources(s.schedule(T, B, want=4)) == [A] * 4         # A is full
    got = sources(s.schedule(T, C, want=4))
    # Piece 0 from B, which has free slots; then one more from A, over its limit.
    assert Counter(got) == {A: 1, B: 1} and s.load(A) == 5
    # A is one over now; C, with two attempts open, has nothing more to get.
    assert s.schedule(T, C, want=4).action == WAIT
    check(s)


def test_a_source_that_serves_nobody_is_never_overbooked(clock):
    s = make(clock, cdn_upload_slots=0, spread_slots=0, overbook_below=4)
    ready(s, T, 16)
    seed_peer(s, T, A, range(16), upload_slots=0)
    seed_peer(s, T, B, [0])
    assert s.schedule(T, B, want=4).action == WAIT
    assert s.load(A) == 0


def test_a_peer_may_hold_one_attempt_over_its_share_for_a_successor(clock):
    # Three sources of 4 slots: an even share of 4 each. A peer fetching 4
    # asks for the successor of a half-done one ahead of time; that fifth
    # attempt is granted rather than answered "wait".
    s = make(clock, cdn_upload_slots=0, peer_upload_slots=4, spread_slots=0,
             overbook_below=0)
    ready(s, T, 16)
    seed_peer(s, T, A, range(16))
    seed_peer(s, T, C, range(16))
    seed_peer(s, T, B, [0])
    assert len(s.schedule(T, B, want=4).grants) == 4
    assert len(s.schedule(T, B, want=1).grants) == 1
    assert s.schedule(T, B, want=1).action == WAIT
    check(s)
