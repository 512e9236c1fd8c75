"""The control block: token-bucket arithmetic on an injected clock, one
shared bucket driven by several processes, and shared disk reservations."""

from __future__ import annotations

import multiprocessing
import random
import time

import pytest

from engine.control import (BIAS, NS, Chain, ControlBlock, LocalBucket, gcra, sleep_until)
from engine.errors import NotEnoughSpace, StoreError
from tests.helpers import run

MIB = 1 << 20


class FakeClock:
    def __init__(self, start: int = 10 * NS) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


def test_gcra_full_bucket_grants_the_burst_at_once_then_charges_the_exact_deficit():
    rate, burst, now = MIB, MIB // 4, 100 * NS
    empty, wait = gcra(-BIAS, now, burst, rate, burst)
    assert wait == 0
    empty, wait = gcra(empty, now, MIB, rate, burst)
    assert wait == NS  # one second of traffic, not a polling guess
    # Half a second later the debt is half as large.
    _, wait = gcra(empty, now + NS // 2, 1, rate, burst)
    assert wait == NS // 2 + -(-NS // rate)


def test_gcra_idle_time_refills_only_up_to_the_burst():
    rate, burst = 1000, 100
    empty, _ = gcra(-BIAS, 0, 100, rate, burst)
    empty, wait = gcra(empty, 3600 * NS, 100, rate, burst)  # an hour idle
    assert wait == 0
    _, wait = gcra(empty, 3600 * NS, 1, rate, burst)
    assert wait == NS // rate  # the bucket held 100, not 3.6 million


def test_gcra_never_exceeds_burst_plus_rate_times_elapsed():
    rng = random.Random(4)
    for _ in range(200):
        rate, burst = rng.randint(1, 10 * MIB), rng.randint(1, MIB)
        clock, empty, t0 = rng.randint(0, NS), -BIAS, None
        grants = []  # (time the bytes may be used, bytes)
        for _ in range(50):
            clock += rng.choice([0, rng.randint(0, NS // 10)])
            n = rng.randint(1, 2 * MIB)
            t0 = clock if t0 is None else t0
            empty, wait = gcra(empty, clock, n, rate, burst)
            grants.append((clock + wait, n))
        grants.sort()
        total = 0
        for when, n in grants:
            total += n
            assert total <= burst + rate * (when - t0) / NS + 1


def test_local_bucket_reserve_uses_the_injected_clock():
    clock = FakeClock()
    bucket = LocalBucket(rate=MIB, burst=MIB, clock=clock)
    assert bucket.reserve(MIB) == clock.now
    assert bucket.reserve(MIB) == clock.now + NS
    clock.now += 2 * NS  # the second reservation ran out at +1 s; +1 s refill since
    assert bucket.reserve(MIB) == clock.now


def test_an_empty_local_bucket_grants_nothing_ahead_of_its_rate():
    """A per-download limit starts empty: no burst, n bytes are due n/rate
    after the start, whatever the order of the requests."""
    clock = FakeClock()
    start = clock.now
    bucket = LocalBucket(rate=MIB, clock=clock, full=False)
    assert bucket.reserve(MIB // 2) == start + NS // 2
    assert bucket.reserve(MIB // 2) == start + NS
    clock.now += 5 * NS  # idle: it refills, but only up to the burst
    assert bucket.reserve(bucket.burst) == clock.now


def test_unlimited_bucket_never_waits():
    clock = FakeClock()
    bucket = LocalBucket(rate=0, clock=clock)
    assert bucket.reserve(1 << 40) == clock.now


def test_shared_bucket_is_one_limit_across_two_mappings(tmp_path):
    clock = FakeClock()
    path = str(tmp_path / "control")
    a = ControlBlock.create(path, clock)
    b = ControlBlock.open(path, clock)
    try:
        a.download.configure(MIB, burst=MIB)
        assert b.download.rate == MIB
        assert a.download.reserve(MIB) == clock.now
        # b sees what a took: the next MiB costs a full second, then two.
        assert b.download.reserve(MIB) == clock.now + NS
        assert a.download.reserve(MIB) == clock.now + 2 * NS
        assert a.upload.reserve(10 * MIB) == clock.now  # upload is unlimited and separate
    finally:
        a.close()
        b.close()


def test_recreating_the_block_does_not_disturb_an_old_mapping(tmp_path):
    path = str(tmp_path / "control")
    old = ControlBlock.create(path)
    old.download.configure(1)
    new = ControlBlock.create(path)
    try:
        assert new.download.rate == 0 and old.download.rate == 1
    finally:
        old.close()
        new.close()


def test_open_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "control"
    path.write_bytes(b"\0" * 8 * 265)
    with pytest.raises(StoreError):
        ControlBlock.open(str(path))
    path.write_bytes(b"short")
    with pytest.raises(StoreError):
        ControlBlock.open(str(path))


def test_acquire_sleeps_the_deficit_and_chains_task_and_host_limits(tmp_path):
    block = ControlBlock.create(str(tmp_path / "control"))
    block.download.configure(8 * MIB, burst=64 << 10)
    task = LocalBucket(rate=2 * MIB, burst=64 << 10)
    pacer = Chain(task, block.download)

    async def main():
        start = time.monotonic()
        for _ in range(8):
            await pacer.acquire(64 << 10)
        return time.monotonic() - start

    try:
        elapsed = run(main())
        # 512 KiB at the task's 2 MiB/s, minus the 64 KiB burst: 0.219 s at least.
        assert elapsed >= (7 * (64 << 10)) / (2 * MIB)
        assert elapsed < 2.0
    finally:
        block.close()


def test_sleep_until_returns_immediately_for_the_past():
    run(sleep_until(0))


def _consume(path: str, chunk: int, seconds: float, go, out) -> None:
    """One process: take chunks for ``seconds`` after ``go``; report (time ns, bytes) each."""
    import asyncio

    block = ControlBlock.open(path)
    grants = []

    async def main():
        while time.monotonic() < stop_at:
            await block.download.acquire(chunk)
            grants.append((time.monotonic_ns(), chunk))

    go.wait()
    stop_at = time.monotonic() + seconds
    asyncio.run(main())
    block.close()
    out.put(grants)


def test_processes_sharing_one_bucket_never_exceed_the_bound(tmp_path):
    rate, burst, chunk, procs = 4 * MIB, 256 << 10, 32 << 10, 4
    path = str(tmp_path / "control")
    block = ControlBlock.create(path)
    block.download.configure(rate, burst)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=_consume, args=(path, chunk, 1.0, go, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    try:
        t0 = time.monotonic_ns()  # CLOCK_MONOTONIC: the same clock in every process
        go.set()
        grants = sorted(g for _ in workers for g in out.get(timeout=30))
        for w in workers:
            w.join(timeout=30)
            assert w.exitcode == 0
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
                w.join()
        block.close()
    total = 0
    for when, n in grants:
        total += n
        assert total <= burst + rate * (when - t0) / NS, "the host-wide limit was exceeded"
    elapsed = (grants[-1][0] - t0) / NS
    # One limit, not four (four private buckets would grant about 4x), and
    # not starved either: together they got a good part of rate x elapsed.
    assert 0.4 * rate * elapsed <= total <= burst + rate * elapsed, (total, elapsed)


def test_disk_reservations_are_shared_and_a_dead_slot_is_reclaimed(tmp_path):
    block = ControlBlock.create(str(tmp_path / "control"))
    try:
        one, two = block.budget(0, floor_bytes=0), block.budget(1, floor_bytes=0)
        r1 = one.reserve(str(tmp_path), "a", now=0, later=MIB)
        two.reserve(str(tmp_path), "b", now=0, later=2 * MIB)
        assert one.reserved == two.reserved == block.disk_reserved() == 3 * MIB
        r1.release()
        assert two.reserved == 2 * MIB
        assert block.reclaim_slot(1) == 2 * MIB  # worker 1 died holding it
        assert block.disk_reserved() == 0
        with pytest.raises(NotEnoughSpace):  # an exabyte: more than any test disk
            one.reserve(str(tmp_path), "c", now=1 << 60)
        assert block.disk_reserved() == 0
    finally:
        block.close()
