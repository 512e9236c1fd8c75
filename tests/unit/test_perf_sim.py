"""The fluid network model and the simulated swarm on small N."""

from __future__ import annotations

import pytest

from perf.sim.fluid import Network, Node
from perf.sim.swarm import MIB, SimConfig, simulate


def _drain(net: Network) -> list[tuple[float, object]]:
    done = []
    while (event := net.pop()) is not None:
        when, flow, timer = event
        if timer is not None:
            timer()
        else:
            done.append((when, flow.tag))
    return done


def test_one_flow_runs_at_the_slower_end():
    net = Network()
    a, b = Node("a", up=100.0, down=1.0), Node("b", up=1.0, down=50.0)
    net.start(a, b, 100.0, "x")
    assert _drain(net) == [(pytest.approx(2.0), "x")]


def test_a_sender_shares_its_upload_and_rates_change_when_a_flow_ends():
    net = Network()
    src = Node("src", up=100.0, down=1.0)
    fast, slow = Node("f", up=1.0, down=1e9), Node("s", up=1.0, down=1e9)
    net.start(src, fast, 50.0, "small")           # 50 each: done at t=1
    net.start(src, slow, 150.0, "big")            # 50 bytes by t=1, then 100/s: t=2
    assert _drain(net) == [(pytest.approx(1.0), "small"), (pytest.approx(2.0), "big")]
    assert net.bytes_moved == pytest.approx(200.0)


def test_the_receiver_share_binds_too_and_cancel_frees_it():
    net = Network()
    dst = Node("dst", up=1.0, down=60.0)
    s1, s2 = Node("s1", up=1e9, down=1.0), Node("s2", up=1e9, down=1.0)
    f1 = net.start(s1, dst, 300.0, "one")
    net.start(s2, dst, 60.0, "two")               # 30/s each
    net.at(1.0, lambda: net.cancel(f1))            # then "two" alone at 60/s
    assert _drain(net) == [(pytest.approx(1.5), "two")]


def test_timers_fire_in_order():
    net, seen = Network(), []
    for t in (0.3, 0.1, 0.2):
        net.at(t, lambda t=t: seen.append(t))
    _drain(net)
    assert seen == [0.1, 0.2, 0.3]


def test_a_single_peer_takes_the_download_time():
    r = simulate(SimConfig(n=1, file_bytes=16 * MIB, rpc_s=0.0))
    # 16 MiB at 100 Mbit/s is 1.342 s; four pieces at a time from the CDN.
    assert r["bound_s"] == pytest.approx(16 * MIB * 8 / 100e6)
    assert r["bound_s"] <= r["t_s"] < 1.05 * r["bound_s"]
    assert r["transfers"] == 16 and r["cdn_bytes_per_file"] == 1.0


@pytest.mark.parametrize("n", [2, 5, 12])
def test_small_swarms_finish_never_beat_the_bound_and_are_reproducible(n):
    cfg = SimConfig(n=n, file_bytes=8 * MIB, seed=3)
    r = simulate(cfg)
    assert r["ratio"] >= 1.0 and r["median_ratio"] >= 1.0
    assert r["median_s"] <= r["t_s"]
    assert r["transfers"] >= n * 8                   # every peer got every piece once
    assert r["scheduler_cpu_s"] > 0
    again = simulate(cfg)
    assert (again["t_s"], again["transfers"]) == (r["t_s"], r["transfers"])


def test_trace_samples_the_swarm():
    r = simulate(SimConfig(n=4, file_bytes=4 * MIB, trace_s=0.1))
    assert r["trace"][0][0] == 0.0
    assert r["trace"][-1][5] <= 4
    assert all(0.0 <= row[2] <= 1.0 + 1e-9 for row in r["trace"])


def test_asking_ahead_overlaps_a_successor_with_the_piece_it_follows():
    # One peer, the CDN alone: without asking ahead a peer holds at most
    # ``parallel`` transfers; asking at NEAR_DONE it holds a successor beside
    # each one near its end (its four run in step here: eight at once), and
    # it still gets every piece once.
    base = SimConfig(n=1, file_bytes=16 * MIB, rpc_s=0.0, trace_s=0.05)
    plain, ahead = simulate(base), simulate(SimConfig(**{**base.__dict__, "ask_ahead": True}))
    assert max(row[1] for row in plain["trace"]) == 4
    assert max(row[1] for row in ahead["trace"]) == 8
    for r in (plain, ahead):
        assert r["transfers"] == 16 and r["ratio"] >= 1.0
