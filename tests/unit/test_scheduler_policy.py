"""The baseline policy's pure functions, on small hand-built inputs."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given, settings, strategies as st

from engine.errors import ConfigError
from engine.types import PeerId, TaskId
from supernode.scheduler import SchedulerConfig, policy
from supernode.scheduler.model import Host, Member, Swarm
from supernode.scheduler.states import ISOLATED

SWARM = Swarm(TaskId.of("policy"))


def holder(name: str, *, load: int = 0, slots: int = 8, location: str = "",
           cdn: bool = False) -> Member:
    host = Host(PeerId(name), location, slots, is_cdn=cdn)
    host.load = load
    return Member(host, SWARM)


def levels_of(count: list[int]) -> tuple[dict[int, set[int]], list[int]]:
    buckets: dict[int, set[int]] = {}
    for piece, c in enumerate(count):
        if c:
            buckets.setdefault(c, set()).add(piece)
    return buckets, sorted(buckets)


def rarest(wanted, count, seed=0, skip=frozenset()):
    buckets, levels = levels_of(count)
    return list(policy.rarest_first(set(wanted), count, buckets, levels,
                                    random.Random(seed), skip))


# --- piece choice --------------------------------------------------------------

def test_rarest_first_orders_by_replica_count():
    count = [5, 1, 3, 2, 0, 4]
    assert rarest(range(6), count) == [1, 3, 2, 5, 0]   # piece 4 has no holder


def test_rarest_first_only_offers_wanted_and_not_skipped_pieces():
    count = [1, 1, 2, 2, 3]
    assert sorted(rarest({0, 2, 4}, count)) == [0, 2, 4]
    assert sorted(rarest({0, 2, 4}, count, skip={0})) == [2, 4]


def test_rarest_first_breaks_ties_at_random():
    count = [2, 1, 1, 1, 1, 3]
    firsts = Counter(rarest(range(6), count, seed=seed)[0] for seed in range(800))
    assert set(firsts) == {1, 2, 3, 4}
    assert min(firsts.values()) > 120                   # about 200 each
    for seed in range(50):                              # ties never jump a level
        order = rarest(range(6), count, seed=seed)
        assert sorted(order[:4]) == [1, 2, 3, 4] and order[4:] == [0, 5]


def test_rarest_first_is_reproducible_with_a_seeded_rng():
    count = [1] * 50
    assert rarest(range(50), count, seed=7) == rarest(range(50), count, seed=7)
    assert len({tuple(rarest(range(50), count, seed=s)) for s in range(10)}) > 1


def test_rarest_first_sees_pieces_removed_while_it_runs():
    count = [1, 1, 2, 2]
    buckets, levels = levels_of(count)
    wanted = {0, 1, 2, 3}
    seen = []
    for piece in policy.rarest_first(wanted, count, buckets, levels, random.Random(0)):
        seen.append(piece)
        wanted.discard(piece)
        wanted.discard(2)        # as if assigned meanwhile
    assert 2 not in seen and sorted(seen) == [0, 1, 3]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.data())
def test_rarest_first_both_strategies_agree_on_the_order_of_levels(count, data):
    n = len(count)
    wanted = data.draw(st.sets(st.integers(0, n - 1)))
    skip = data.draw(st.sets(st.integers(0, n - 1)))
    order = rarest(wanted, count, seed=data.draw(st.integers(0, 99)), skip=skip)
    assert sorted(order) == sorted(p for p in wanted - skip if count[p])
    assert [count[p] for p in order] == sorted(count[p] for p in order)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.data())
def test_random_order_yields_each_held_wanted_piece_once(count, data):
    n = len(count)
    wanted = data.draw(st.sets(st.integers(0, n - 1)))
    skip = data.draw(st.sets(st.integers(0, n - 1)))
    order = list(policy.random_order(wanted, count, random.Random(data.draw(st.integers(0, 99))),
                                     skip))
    assert sorted(order) == sorted(p for p in wanted - skip if count[p])


def test_random_order_spreads_first_picks_over_all_pieces():
    count = [1] * 64
    firsts = Counter(next(policy.random_order(set(range(64)), count, random.Random(seed)))
                     for seed in range(6400))
    # Uniform would give 100 each; rarest-first with rotation gives the same,
    # but a fixed order would put all 6400 on one piece.
    assert len(firsts) == 64 and max(firsts.values()) < 160


def test_piece_order_is_checked():
    with pytest.raises(ConfigError):
        SchedulerConfig(piece_order="sequential")


# --- source choice -------------------------------------------------------------

def pick(holders, cdn=None, *, location="", seed=0, **kw):
    return policy.pick_source(holders, cdn, location=location, rng=random.Random(seed), **kw)


def test_least_loaded_holder_wins():
    busy, idle, mid = holder("busy", load=6), holder("idle", load=1), holder("mid", load=3)
    assert pick([busy, idle, mid]) is idle


def test_load_is_measured_against_each_hosts_own_slots():
    small = holder("small", load=2, slots=4)      # half full
    large = holder("large", load=3, slots=16)     # under a fifth
    assert pick([small, large]) is large


def test_a_full_holder_is_never_chosen():
    full = holder("full", load=8, slots=8)
    assert pick([full]) is None
    assert pick([full, holder("free", load=7)]).host.peer_id == PeerId("free")
    assert pick([holder("zero", slots=0)]) is None


def test_peers_are_preferred_over_the_cdn_even_when_busier():
    cdn = holder("cdn", slots=64, cdn=True)
    peer = holder("peer", load=7)
    assert pick([peer], cdn) is peer
    assert pick([], cdn) is cdn                                 # no peer replica yet
    assert pick([holder("full", load=8)], cdn) is cdn           # every peer replica busy
    assert pick([peer], holder("fullcdn", load=64, slots=64, cdn=True)) is peer


def test_same_location_is_preferred_over_load():
    near = holder("near", load=6, location="rack-1")
    far = holder("far", load=0, location="rack-2")
    assert pick([far, near], location="rack-1") is near
    assert pick([far, near], location="rack-2") is far
    assert pick([far, near], location="rack-3") is far          # nobody near: least loaded


def test_a_request_spreads_over_sources_when_it_can():
    a, b = holder("a", load=0), holder("b", load=5)
    assert pick([a, b], avoid={a.host}) is b
    assert pick([a], avoid={a.host}) is a                       # the only eligible one
    cdn = holder("cdn", slots=64, cdn=True)
    assert pick([a], cdn, avoid={a.host}) is cdn


def test_exclusion_is_hard():
    a, b = holder("a"), holder("b", load=7)
    assert pick([a, b], exclude={a.host}) is b
    assert pick([a], exclude={a.host}) is None


def test_isolated_and_departed_holders_are_skipped():
    bad, gone, ok = holder("bad"), holder("gone"), holder("ok", load=5)
    bad.host.health = ISOLATED
    gone.alive = False
    assert pick([bad, gone, ok]) is ok
    assert pick([bad, gone]) is None
    blocked = holder("blocked")
    assert pick([blocked, ok], blocked={blocked.host}) is ok
    cdn = holder("cdn", slots=64, cdn=True)
    assert pick([], cdn, blocked={cdn.host}) is None


def test_only_a_bounded_window_of_holders_is_examined():
    class Spy:
        """A holder view that counts how often the policy looks at it."""

        looked = 0

        def __init__(self, host: Host) -> None:
            self._host, self.alive = host, True

        @property
        def host(self) -> Host:
            Spy.looked += 1
            return self._host

    holders = [Spy(Host(PeerId(f"p{i}"), "", 8)) for i in range(1000)]
    for spy in holders:
        spy._host.load = 1                  # nobody idle: no early stop
    assert pick(holders, sample=16) is not None
    assert Spy.looked == 16
    Spy.looked = 0
    holders[0]._host.load = 0
    assert pick(holders[:10], sample=16) is holders[0]
    assert Spy.looked == 1                  # an idle, near, unused holder ends the look


def test_window_wraps_around_the_end_of_the_holder_list():
    holders = [holder(f"p{i}", load=8) for i in range(20)]
    holders[0] = holder("free")
    # Whatever the start, a 20-wide window over 20 holders finds the free one.
    for seed in range(30):
        assert pick(holders, sample=20, seed=seed) is holders[0]
    hits = sum(pick(holders, sample=5, seed=seed) is holders[0] for seed in range(400))
    assert 50 < hits < 150                   # 5/20 of the starts see it


# --- endgame, isolation ------------------------------------------------------------

def test_endgame_only_when_everything_left_is_in_flight_and_little_remains():
    def attempts(*opened):
        return [SimpleNamespace(opened=t) for t in opened]

    inflight = {3: attempts(5.0), 7: attempts(1.0, 2.0), 9: attempts(1.0)}
    kw = dict(pieces=4, copies=2, opened_by=10.0)
    assert policy.endgame(inflight, 0, **kw) == [3, 9]
    assert policy.endgame(inflight, 1, **kw) == []            # something is still wanted
    assert policy.endgame(inflight, 0, **{**kw, "pieces": 2}) == []   # too much remains
    assert policy.endgame({}, 0, **kw) == []
    assert policy.endgame(inflight, 0, **{**kw, "copies": 3}) == [3, 9, 7]
    # A fresh attempt is given time: piece 3 was opened at 5.0.
    assert policy.endgame(inflight, 0, **{**kw, "opened_by": 4.9}) == [9]
    assert policy.endgame(inflight, 0, **{**kw, "opened_by": 5.0}) == [3, 9]


def test_a_source_record_fades_and_isolation_needs_count_and_share():
    assert policy.tally(0, 0, 0, 64) == (0, 1)
    assert policy.tally(2, 5, 3, 64) == (5, 5)
    assert policy.tally(40, 24, 0, 64) == (20, 12.5)          # outgrew the window: halved
    assert policy.failing(3, 0, threshold=3, ratio=0.5)       # three failures, nothing else
    assert not policy.failing(2, 0, threshold=3, ratio=0.5)   # too few to judge
    assert not policy.failing(6, 58, threshold=3, ratio=0.5)  # a background rate of 10 %
    assert policy.failing(30, 30, threshold=3, ratio=0.5)
    assert policy.isolate_host(0, 0, 2, threshold=10, ratio=0.5, tasks=2)
    assert policy.isolate_host(10, 5, 0, threshold=10, ratio=0.5, tasks=2)
    assert not policy.isolate_host(10, 50, 1, threshold=10, ratio=0.5, tasks=2)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32))
def test_a_ten_percent_failure_rate_never_isolates_a_busy_source(seed):
    rng = random.Random(seed)
    fails = oks = 0.0
    for i in range(2000):
        weight = 1 if rng.random() < 0.1 else 0
        fails, oks = policy.tally(fails, oks, weight, SchedulerConfig().health_window)
        if i > 20:       # past its first few transfers
            assert not policy.failing(fails, oks, threshold=3, ratio=0.5)


@pytest.mark.parametrize("reason,weight", [("failed", 1), ("timeout", 1), ("corrupt", 3),
                                           ("refused", 0)])
def test_failure_weights(reason, weight):
    assert SchedulerConfig().weight(reason) == weight
