"""A fluid bandwidth model with events: transfers as flows between nodes.

Every node has an upload and a download capacity (bytes per second). A flow
moves ``size`` bytes from one node to another; while it runs, its rate is

    min(src.up / src.uploads, dst.down / dst.downloads)

where ``uploads`` / ``downloads`` count the node's running flows: each
transfer gets its sender's share or its receiver's share, whichever is
smaller. This is the model of the issue (simple, local, and pessimistic
next to TCP, which hands capacity a slow flow leaves unused to the others at
the same node; see perf/README.md for what that means for the comparison
with the lab).

Because a rate depends only on its two endpoints' counts, a flow starting or
ending changes the rates of the flows at those two nodes only: they are
brought up to date (bytes moved so far at the old rate) and rescheduled.
Completion events sit in one heap; an entry whose flow was rescheduled since
is skipped when popped (lazy deletion, the flow's ``version`` tells).

Not thread-safe: one event loop (``Network.run_until`` / ``pop``) owns it.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Node:
    __slots__ = ("name", "up", "down", "out", "inn")

    def __init__(self, name, up: float, down: float) -> None:
        if up <= 0 or down <= 0:
            raise ValueError("capacities must be > 0")
        self.name = name
        self.up = up
        self.down = down
        # Dicts used as ordered sets: iteration order (and so the order of
        # events at equal times) must not depend on memory addresses, or a
        # seeded run would not repeat.
        self.out: dict[Flow, None] = {}   # flows this node sends
        self.inn: dict[Flow, None] = {}   # flows this node receives


class Flow:
    __slots__ = ("src", "dst", "left", "rate", "since", "version", "tag")

    def __init__(self, src: Node, dst: Node, size: float, tag) -> None:
        self.src = src
        self.dst = dst
        self.left = float(size)
        self.rate = 0.0
        self.since = 0.0
        self.version = 0
        self.tag = tag


class Network:
    """Flows and timers on one clock. ``now`` moves only when events are popped."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list = []
        self._seq = itertools.count()
        self.flows_started = 0
        self.bytes_moved = 0.0

    # --- timers ----------------------------------------------------------------

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Call ``callback()`` at time ``when`` (not before ``now``)."""
        heapq.heappush(self._heap, (max(when, self.now), next(self._seq), None, callback))

    # --- flows -----------------------------------------------------------------

    def start(self, src: Node, dst: Node, size: float, tag) -> Flow:
        flow = Flow(src, dst, size, tag)
        flow.since = self.now
        self.flows_started += 1
        self._settle(src, dst)
        src.out[flow] = None
        dst.inn[flow] = None
        self._rerate(src, dst)
        return flow

    def cancel(self, flow: Flow) -> None:
        """Stop a running flow (its completion never fires)."""
        if flow not in flow.src.out:
            return
        self._settle(flow.src, flow.dst)
        self._remove(flow)

    def _remove(self, flow: Flow) -> None:
        flow.version += 1
        del flow.src.out[flow]
        del flow.dst.inn[flow]
        self._rerate(flow.src, flow.dst)

    def _settle(self, src: Node, dst: Node) -> None:
        """Bring the flows at ``src`` and ``dst`` up to ``now`` at their current rates."""
        now = self.now
        for group in (src.out, dst.inn):
            for f in group:
                if f.since < now:
                    moved = f.rate * (now - f.since)
                    f.left -= moved
                    self.bytes_moved += moved
                    f.since = now

    def _rerate(self, src: Node, dst: Node) -> None:
        now, heap, seq = self.now, self._heap, self._seq
        for f in itertools.chain(src.out, dst.inn):
            s, d = f.src, f.dst
            rate = min(s.up / len(s.out), d.down / len(d.inn))
            if rate == f.rate and f.version:
                continue                        # same rate: its heap entry still holds
            f.rate = rate
            f.version += 1
            left = f.left if f.left > 0 else 0.0
            heapq.heappush(heap, (now + left / rate, next(seq), f, f.version))

    # --- the loop --------------------------------------------------------------

    def pop(self) -> tuple[float, Flow | None, Callable | None] | None:
        """Advance to the next event; (time, finished flow, None) or (time, None, timer)."""
        heap = self._heap
        while heap:
            when, _, obj, extra = heapq.heappop(heap)
            if obj is None:
                self.now = when
                return when, None, extra
            if extra != obj.version or obj not in obj.src.out:
                continue                        # rescheduled or cancelled since
            self.now = when
            self._settle(obj.src, obj.dst)
            obj.left = 0.0
            self._remove(obj)
            return when, obj, None
        return None
