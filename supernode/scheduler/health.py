"""Source health: failure records, isolation per task and host-wide, expiry.

Not thread-safe; one writer applies events one at a time.

Every outcome a downloader reports is tallied against its source twice: in
the task (on the source's ``Member``) and host-wide (on its ``Host``). A
failed attempt adds the reason's weight, a delivered piece adds one success
(``policy.tally``). When a record is failing (``policy.failing``) the source
is isolated there: the policy skips it as a source, though it may still
download. A host isolated in ``host_isolate_tasks`` tasks, or failing over
all its tasks, is isolated everywhere (``policy.isolate_host``).

Isolations expire after ``isolation_time`` on the injected clock: each one
pushes its expiry on a heap and ``expire(now)`` pops the due ones. Expiry
clears the record, so a reinstated source starts afresh: a few failures put
it back in isolation, a background failure rate does not.
"""

from __future__ import annotations

import heapq
from itertools import count

from supernode.scheduler import policy
from supernode.scheduler.config import SchedulerConfig
from supernode.scheduler.model import Host, Swarm
from supernode.scheduler.states import EXPIRE, HEALTHY, ISOLATE, ISOLATED, SOURCE, STRIKE


class Health:
    """Failure records and isolations of every source, with their expiries."""

    __slots__ = ("config", "_due", "_seq")

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        # (expiry time, tie-break, swarm or None for host-wide, host)
        self._due: list[tuple[float, int, Swarm | None, Host]] = []
        self._seq = count()

    def success(self, swarm: Swarm, host: Host) -> None:
        """``host`` delivered a piece in ``swarm``."""
        window = self.config.health_window
        member = swarm.members.get(host)
        if member is not None:
            member.fails, member.oks = policy.tally(member.fails, member.oks, 0, window)
        host.fails, host.oks = policy.tally(host.fails, host.oks, 0, window)

    def failure(self, swarm: Swarm, host: Host, weight: int, now: float) -> None:
        """``host`` failed an attempt in ``swarm``; isolate it if it is failing."""
        if not weight:
            return
        cfg = self.config
        member = swarm.members.get(host)    # None if the source left the task since
        state = ISOLATED if host in swarm.blocked else HEALTHY
        if member is not None:
            member.fails, member.oks = policy.tally(member.fails, member.oks, weight,
                                                    cfg.health_window)
        if state == HEALTHY and member is not None and policy.failing(
                member.fails, member.oks, threshold=cfg.task_isolate_after,
                ratio=cfg.failure_ratio):
            SOURCE.next(state, ISOLATE)
            swarm.blocked.add(host)
            host.isolated_in += 1
            heapq.heappush(self._due, (now + cfg.isolation_time, next(self._seq), swarm, host))
        else:
            SOURCE.next(state, STRIKE)
        host.fails, host.oks = policy.tally(host.fails, host.oks, weight, cfg.health_window)
        if host.health == HEALTHY and policy.isolate_host(
                host.fails, host.oks, host.isolated_in, threshold=cfg.host_isolate_after,
                ratio=cfg.failure_ratio, tasks=cfg.host_isolate_tasks):
            host.health = SOURCE.next(host.health, ISOLATE)
            heapq.heappush(self._due, (now + cfg.isolation_time, next(self._seq), None, host))
        else:
            host.health = SOURCE.next(host.health, STRIKE)

    def forget(self, swarm: Swarm) -> None:
        """The task is gone: its isolations no longer count toward host-wide ones."""
        for host in swarm.blocked:
            host.isolated_in -= 1
        swarm.blocked.clear()

    def expire(self, now: float) -> list[Host]:
        """Reinstate every isolation due by ``now``; return the hosts touched."""
        due = self._due
        touched = []
        while due and due[0][0] <= now:
            _, _, swarm, host = heapq.heappop(due)
            if swarm is None:
                host.health = SOURCE.next(host.health, EXPIRE)
                host.fails = host.oks = 0.0
            elif host in swarm.blocked:     # not forgotten with its task meanwhile
                SOURCE.next(ISOLATED, EXPIRE)
                swarm.blocked.discard(host)
                host.isolated_in -= 1
                member = swarm.members.get(host)
                if member is not None:
                    member.fails = member.oks = 0.0
            else:
                continue
            touched.append(host)
        return touched

    def pending(self) -> int:
        return len(self._due)
