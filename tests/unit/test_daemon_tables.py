"""The coordinator's pure tables: job routing and recovery, task expiry."""

from __future__ import annotations

from engine.daemon.gc import ExpiryTable
from engine.daemon.jobs import MAX_ATTEMPTS, JobTable, choose_slot
from engine.localapi import DownloadCommand
from engine.types import TaskId

A, B, C = TaskId.of("a"), TaskId.of("b"), TaskId.of("c")


def _cmd(name: str = "f") -> DownloadCommand:
    return DownloadCommand(f"http://origin/{name}", f"/tmp/{name}")


def test_a_task_stays_on_one_slot_and_new_tasks_go_to_the_least_loaded():
    table = JobTable(slots=2)
    first, sent = table.add(_cmd(), A)
    second, sent2 = table.add(_cmd(), A)
    assert sent and sent2 and first.slot == second.slot
    other, _ = table.add(_cmd(), B)
    assert other.slot != first.slot
    table.end(first)
    assert table.busy(A)  # the second job still runs it
    table.end(second)
    assert not table.busy(A) and A not in table.task_slot


def test_choose_slot_is_deterministic_and_balanced():
    tasks = [TaskId.of(str(i)) for i in range(12)]
    placed: dict[TaskId, int] = {}
    for t in tasks:
        placed[t] = choose_slot(placed, 3, t)
    assert sorted(list(placed.values()).count(s) for s in range(3)) == [4, 4, 4]
    assert choose_slot(placed, 3, tasks[5]) == placed[tasks[5]]


def test_a_dead_worker_s_jobs_are_held_then_sent_again_until_out_of_attempts():
    table = JobTable(slots=1)
    job, _ = table.add(_cmd(), A)
    for attempt in range(2, MAX_ATTEMPTS + 1):
        again, failed = table.worker_died(0)
        assert again == [job] and not failed and job.attempts == attempt
        late, sent = table.add(_cmd(), A)  # arrives while A is being restarted
        assert not sent
        assert table.release({A}, again) == [job, late]
        table.end(late)
    again, failed = table.worker_died(0)
    assert not again and failed == [job] and job.finished


def test_stale_events_are_recognised():
    table = JobTable(slots=2)
    job, _ = table.add(_cmd(), A)
    assert table.get(job.id, job.slot) is job
    assert table.get(job.id, 1 - job.slot) is None
    table.end(job)
    assert table.get(job.id, job.slot) is None
    assert table.release(set(), [job]) == []  # a job that ended is not sent again


def test_expiry_follows_the_last_use():
    table = ExpiryTable(ttl=10)
    table.touch(A, 100)
    table.touch(B, 105)
    table.touch(A, 108)  # used again: now expires at 118
    assert table.next_deadline() == 115
    assert table.due(114) == []
    assert table.due(115) == [B]
    assert table.next_deadline() == 118
    table.touch(C, 50)
    assert table.due(200) == [C, A] and len(table) == 0
    assert table.next_deadline() is None


def test_an_older_touch_never_shortens_a_task_s_life():
    table = ExpiryTable(ttl=10)
    table.touch(A, 100)
    table.touch(A, 90)
    assert table.next_deadline() == 110
