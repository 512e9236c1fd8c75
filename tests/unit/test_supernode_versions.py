"""The registration rules of supernode.versions.plan, without a network."""

from __future__ import annotations

import math

import pytest

from engine.pieces import PieceLayout
from engine.types import TaskId
from supernode.versions import (
    COMPLETE, FAILED, JOIN, PENDING, REVALIDATE, RUNNING, START, USE, Entry, Version,
    fingerprint, new_version_id, over_quota, plan)

IDENT = TaskId("ab" * 32)


def _entry(state=None, **kw) -> Entry:
    if state is None:
        return Entry(IDENT)
    return Entry(IDENT, Version(IDENT, IDENT, False, state=state, **kw))


@pytest.mark.parametrize("entry,now,expected", [
    (_entry(), 0, START),
    (_entry(PENDING), 0, USE),
    (_entry(RUNNING), 0, USE),
    (_entry(COMPLETE, fresh_until=100), 99, USE),
    (_entry(COMPLETE, fresh_until=100), 100, REVALIDATE),
    (_entry(COMPLETE, fresh_until=math.inf), 1e12, USE),      # pinned
    (_entry(FAILED, failed_at=50), 59, USE),                  # negative cache
    (_entry(FAILED, failed_at=50), 60, START),
    (_entry(FAILED, failed_at=50, fingerprint="mine"), 51, USE),
    (_entry(FAILED, failed_at=50, fingerprint="theirs"), 51, START),
])
def test_plan(entry, now, expected):
    assert plan(entry, now, "mine", negative_ttl=10) == expected


def test_join_a_running_revalidation():
    entry = _entry(COMPLETE, fresh_until=0)
    entry.candidate = Version(TaskId("cd" * 32), IDENT, False)
    assert plan(entry, 1, "x", negative_ttl=10) == JOIN


def test_fingerprint_depends_on_url_and_headers_not_their_case_or_order():
    a = fingerprint("http://h/x?sig=1", {"Authorization": "t", "Cookie": "c"})
    assert a == fingerprint("http://h/x?sig=1", {"cookie": "c", "authorization": "t"})
    assert a != fingerprint("http://h/x?sig=2", {"Authorization": "t", "Cookie": "c"})
    assert a != fingerprint("http://h/x?sig=1", {"Authorization": "u", "Cookie": "c"})


def test_version_ids():
    assert new_version_id(IDENT, {}) == IDENT
    later = {new_version_id(IDENT, {IDENT: None}) for _ in range(3)}
    assert len(later) == 3 and IDENT not in later


def test_grant_ledger():
    from engine.types import PeerId
    from supernode.ledger import GrantLedger

    task, other = TaskId("ab" * 32), TaskId("cd" * 32)
    a, b, cdn = PeerId("a"), PeerId("b"), PeerId("cdn")
    ledger = GrantLedger()
    ledger.grant(task, a, 0, cdn)
    ledger.grant(task, a, 0, b)          # endgame: a second source
    ledger.grant(other, a, 3, cdn)
    assert ledger.granted(task, a, 0, cdn) and ledger.granted(task, a, 0, b)
    assert not ledger.granted(task, a, 1, cdn) and not ledger.granted(task, b, 0, cdn)
    ledger.settle(task, a, 0, b, ok=False)
    assert not ledger.granted(task, a, 0, b) and ledger.granted(task, a, 0, cdn)
    ledger.settle(task, a, 0, cdn, ok=True)
    assert not ledger.granted(task, a, 0, cdn) and len(ledger) == 1
    ledger.settle(task, a, 7, cdn, ok=True)  # nothing to settle: no error
    ledger.forget_peer(a)
    assert len(ledger) == 0
    ledger.grant(task, b, 1, cdn)
    ledger.forget_task(task)
    assert len(ledger) == 0


def test_over_quota_removes_least_recently_used_and_never_what_must_stay():
    def version(name, mib, used_at, state=COMPLETE):
        v = Version(TaskId.of(name), TaskId.of(name), False, state=state, used_at=used_at)
        v.layout = PieceLayout(mib << 20, 1 << 20)
        return v

    old, kept, mid, new = (version("old", 3, 1), version("kept", 3, 2),
                           version("mid", 3, 3), version("new", 3, 4))
    running = version("running", 30, 0, state=RUNNING)   # not finished: never counted
    every = [new, running, mid, kept, old]
    assert over_quota(every, 12 << 20, keep=lambda v: False) == []
    assert over_quota(every, 9 << 20, keep=lambda v: False) == [old]
    # "kept" must stay: the next least recently used goes instead.
    assert over_quota(every, 6 << 20, keep=lambda v: v is kept) == [old, mid]
    # Everything must stay: over the quota, nothing to remove.
    assert over_quota(every, 1, keep=lambda v: True) == []
