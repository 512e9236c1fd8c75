"""The coordinator's job table: which request runs where, as plain data.

A job is one dfget download request. The table keeps, for every unfinished
job, the worker slot that runs it, and for every task id the one slot that
runs all of that task's jobs. What must stay true:

* a task id is on at most one slot at a time, so only that worker creates
  the task in the store and concurrent requests join one download there;
* a new task goes to the slot running the fewest tasks, ties broken by the
  task id, so routing is deterministic and spreads evenly;
* a task that is being restarted after its worker died is *held*: new jobs
  for it wait in the table instead of reaching the new worker while the old
  partial task is being removed.

No I/O here: the coordinator sends the messages this table hands back.
One event loop owns it; not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from engine.localapi import DownloadCommand
from engine.types import TaskId

MAX_ATTEMPTS = 3


@dataclass(eq=False, slots=True)
class Job:
    id: int
    command: DownloadCommand
    task_id: TaskId
    slot: int
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    attempts: int = 1
    finished: bool = False

    def start_message(self) -> dict:
        return {"op": "start", "job": self.id, "request": self.command.to_wire()}


def choose_slot(task_slots: dict[TaskId, int], slots: int, task_id: TaskId) -> int:
    """The slot for a task: where it runs already, else the least-loaded one."""
    slot = task_slots.get(task_id)
    if slot is not None:
        return slot
    load = [0] * slots
    for s in task_slots.values():
        load[s] += 1
    start = int(task_id.hex[:8], 16) % slots
    order = load[start:] + load[:start]
    return (start + order.index(min(order))) % slots


class JobTable:
    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.jobs: dict[int, Job] = {}
        self.task_slot: dict[TaskId, int] = {}
        self.task_jobs: dict[TaskId, set[int]] = defaultdict(set)
        self.held: dict[TaskId, list[Job]] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, command: DownloadCommand, task_id: TaskId) -> tuple[Job, bool]:
        """Record a new job; True when it may be sent now (its task is not held)."""
        slot = choose_slot(self.task_slot, self.slots, task_id)
        job = Job(self._next, command, task_id, slot)
        self._next += 1
        self.jobs[job.id] = job
        self.task_slot[task_id] = slot
        self.task_jobs[task_id].add(job.id)
        if task_id in self.held:
            self.held[task_id].append(job)
            return job, False
        return job, True

    def get(self, job_id: int, slot: int) -> Job | None:
        """The live job ``job_id`` if ``slot`` runs it (else a late, stale event)."""
        job = self.jobs.get(job_id)
        return job if job is not None and job.slot == slot else None

    def busy(self, task_id: TaskId) -> bool:
        return task_id in self.task_jobs

    def end(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        ids = self.task_jobs.get(job.task_id)
        if ids is not None:
            ids.discard(job.id)
            if not ids:
                del self.task_jobs[job.task_id]
                self.task_slot.pop(job.task_id, None)

    def worker_died(self, slot: int) -> tuple[list[Job], list[Job]]:
        """After ``slot`` died: (jobs to run again, jobs out of attempts).

        Jobs to run again are counted and their tasks held until ``release``.
        """
        again, failed = [], []
        for job in self.jobs.values():
            if job.slot != slot or job.finished:
                continue
            if job.attempts >= MAX_ATTEMPTS:
                job.finished = True
                failed.append(job)
            else:
                job.attempts += 1
                again.append(job)
                self.held.setdefault(job.task_id, [])
        return again, failed

    def release(self, tasks: set[TaskId], jobs: list[Job]) -> list[Job]:
        """End the hold on ``tasks``; the live jobs to send now (``jobs`` plus
        those that arrived meanwhile)."""
        for task_id in tasks:
            jobs = jobs + self.held.pop(task_id, [])
        return [job for job in jobs if self.jobs.get(job.id) is job and not job.finished]
