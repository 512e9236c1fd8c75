"""Which finished tasks to remove, and when: a pure expiry table.

A task expires ``ttl`` seconds after its last use (created, downloaded,
exported again). The coordinator feeds uses in with ``touch`` and arms one
timer for ``next_deadline()``; when it fires it removes ``due(now)``, minus
the tasks in use, and re-arms. No clock is read here (times are arguments),
so tests drive it with plain numbers. Not thread-safe: one loop owns it.
"""

from __future__ import annotations

import heapq

from engine.types import TaskId


class ExpiryTable:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._last: dict[TaskId, float] = {}
        self._heap: list[tuple[float, str]] = []  # (deadline, task hex); stale entries skipped

    def __len__(self) -> int:
        return len(self._last)

    def touch(self, task_id: TaskId, at: float) -> None:
        if at >= self._last.get(task_id, float("-inf")):
            self._last[task_id] = at
            heapq.heappush(self._heap, (at + self.ttl, task_id.hex))

    def forget(self, task_id: TaskId) -> None:
        self._last.pop(task_id, None)

    def next_deadline(self) -> float | None:
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def due(self, now: float) -> list[TaskId]:
        """Tasks whose deadline has passed; they leave the table."""
        out = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, hexid = heapq.heappop(self._heap)
            task_id = TaskId(hexid)
            del self._last[task_id]
            out.append(task_id)

    def _drop_stale(self) -> None:
        while self._heap:
            deadline, hexid = self._heap[0]
            last = self._last.get(TaskId(hexid))
            if last is not None and last + self.ttl == deadline:
                return
            heapq.heappop(self._heap)
