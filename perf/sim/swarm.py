"""A damselfly swarm in simulated time: the real scheduler core, peers as in the engine.

The scheduler is ``supernode.scheduler.Scheduler`` itself, driven with the
simulated clock, so what is measured is the shipped policy and its CPU cost,
not a model of it. The peers follow the engine's download loop
(``engine/download/p2p.py``): a round reports the results since the last one
and asks for ``parallel - in flight`` pieces; after an ``assign`` of fewer
pieces than that it asks again at once (the engine's loop sends a call
whenever it wants pieces and no "wait" holds it back); after a ``wait`` it
asks again after ``wait_ms`` or when a transfer ends, whichever is first; a piece
assigned again while it is in flight (an endgame copy) is not fetched twice
but reported with the first. A finished peer keeps serving, as a dfdaemon
does. Each schedule call costs ``rpc_s`` (the round trip to the supernode)
before its transfers start.

Asking ahead. The engine also asks for a piece's successor when the piece
is NEAR_DONE and starts it at once, beside it: that hides the request, the
first bytes and the TCP ramp, which in the lab cost tens of milliseconds
per piece (engine.download.p2p). ``ask_ahead=True`` models it, but the
fluid model has none of that latency to hide and only the cost: an extra
flow sharing the receiver and more "wait" answers. 1,000 peers: T/bound
1.167 without, 1.215 with (NEAR_DONE 0.5; 0.9 gave 1.195), so it is off by
default and the sim's peers ask after each piece; the lab at N = 10 has the
opposite sign (10.74 s without, 10.42 s with, means of 7 and 3 runs).

The CDN holds the whole file from the start (in the lab it sits next to the
origin, one loopback copy away), unless ``origin_bps`` feeds it piece by piece.
Transfers are flows of ``perf.sim.fluid``; capacities in bits per second.

Scale: cost is per transfer (one scheduler round, a few heap operations), so
10,000 peers x 100 pieces of 1 MiB is a million transfers, a few minutes of
CPU. ``piece_bytes`` may be raised to trade pipelining detail for speed.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from dataclasses import asdict, dataclass

from engine.download.piece import NEAR_DONE
from engine.pieces import choose_piece_size
from engine.types import PeerId, TaskId
from perf.lab.bound import kumar_ross
from perf.sim.fluid import Network, Node
from supernode.scheduler import ASSIGN, DONE, WAIT, Scheduler, SchedulerConfig

MIB = 1 << 20


@dataclass
class SimConfig:
    n: int
    file_bytes: int = 100 * MIB
    piece_bytes: int = 0                    # 0: what the engine would choose
    server_up_bps: float = 200e6            # the CDN's upload
    up_bps: float = 100e6
    down_bps: float = 100e6
    parallel: int = 4                       # dfdaemon --parallel
    rpc_s: float = 0.002
    origin_bps: float = 0.0                 # 0: the CDN holds the file at t=0
    tick_s: float = 1.0
    seed: int = 1
    trace_s: float = 0.0                    # > 0: sample the swarm this often (diagnostics)
    ask_ahead: bool = False                 # ask for a successor at NEAR_DONE, as the engine

    @property
    def piece_size(self) -> int:
        return self.piece_bytes or choose_piece_size(self.file_bytes)


class _Peer:
    __slots__ = ("pid", "node", "inflight", "deferred", "results", "pending", "round_no",
                 "done_at", "near")

    def __init__(self, pid: PeerId, node: Node) -> None:
        self.pid = pid
        self.node = node
        self.inflight: dict[int, object] = {}
        self.deferred: dict[int, list[PeerId]] = {}
        self.results: list[tuple[int, PeerId]] = []
        self.pending = False                # a round is due (its rpc is under way)
        self.round_no = 0
        self.done_at: float | None = None
        self.near: set[int] = set()         # pieces in flight past NEAR_DONE


def simulate(cfg: SimConfig, scheduler_config: SchedulerConfig | None = None) -> dict:
    """Run one swarm to completion; the measurements as a dict."""
    net = Network()
    sched = Scheduler(scheduler_config, clock=lambda: net.now, rng=random.Random(cfg.seed),
                      cdn=PeerId("cdn"))
    task = TaskId.of("sim", str(cfg.n), str(cfg.file_bytes))
    size, piece = cfg.file_bytes, cfg.piece_size
    pieces = (size + piece - 1) // piece
    last = size - (pieces - 1) * piece
    cdn_node = Node("cdn", cfg.server_up_bps / 8, 1e15)
    nodes: dict[PeerId, Node] = {PeerId("cdn"): cdn_node}
    peers = [_Peer(PeerId(f"p{i}"), Node(i, cfg.up_bps / 8, cfg.down_bps / 8))
             for i in range(cfg.n)]
    for p in peers:
        nodes[p.pid] = p.node
    stats = {"calls": 0, "waits": 0, "sched_s": 0.0, "cdn_bytes": 0}
    unfinished = [cfg.n]
    clock = time.perf_counter

    def round_now(p: _Peer) -> None:
        p.pending = False
        p.round_no += 1
        t = clock()
        if p.results:
            sched.pieces_done(task, p.pid, p.results)
            p.results = []
        d = sched.schedule(task, p.pid, cfg.parallel + len(p.near) - len(p.inflight))
        stats["sched_s"] += clock() - t
        stats["calls"] += 1
        action = d.action
        if action == ASSIGN:
            for g in d.grants:
                if g.piece in p.inflight:
                    p.deferred.setdefault(g.piece, []).append(g.source)
                    continue
                src = nodes[g.source]
                n_bytes = last if g.piece == pieces - 1 else piece
                if src is cdn_node:
                    stats["cdn_bytes"] += n_bytes
                flow = p.inflight[g.piece] = net.start(src, p.node, n_bytes,
                                                       (p, g.piece, g.source))
                if cfg.ask_ahead:
                    watch_near(p, g.piece, flow, n_bytes * (1 - NEAR_DONE))
            if len(p.inflight) < cfg.parallel + len(p.near):
                trigger(p)      # fewer than asked: the engine asks again at once
        elif action == WAIT:
            stats["waits"] += 1
            no = p.round_no
            net.at(net.now + max(d.wait_ms / 1000, 0.01),
                   lambda: no == p.round_no and not p.pending and trigger(p))
        elif action == DONE:
            p.done_at = net.now
            unfinished[0] -= 1
        else:
            raise RuntimeError(f"the scheduler answered {action}: {d.message}")

    def watch_near(p: _Peer, piece: int, flow, left_at_near: float) -> None:
        """Mark ``piece`` near done (and ask ahead) once ``flow`` has at most
        ``left_at_near`` bytes left; rates change, so check and re-aim."""
        def check() -> None:
            if p.inflight.get(piece) is not flow or not flow.rate:
                return                      # ended (or not moving: its end re-triggers)
            left = flow.left - flow.rate * (net.now - flow.since)
            if left <= left_at_near + 1:
                p.near.add(piece)
                trigger(p)
            else:
                net.at(net.now + (left - left_at_near) / flow.rate, check)
        check()

    def trigger(p: _Peer) -> None:
        if p.pending or p.done_at is not None:
            return
        if cfg.rpc_s:
            p.pending = True
            net.at(net.now + cfg.rpc_s, lambda: round_now(p))
        else:
            round_now(p)

    def tick() -> None:
        t = clock()
        sched.tick()
        stats["sched_s"] += clock() - t
        if unfinished[0]:
            net.at(net.now + cfg.tick_s, tick)

    trace: list[tuple] = []

    def sample() -> None:
        # (time, running transfers, download use of all peers, uploading peers,
        #  peers with nothing in flight, finished peers, CDN uploads)
        down = sum(f.rate for p in peers for f in p.node.inn)
        trace.append((round(net.now, 3), sum(len(p.inflight) for p in peers),
                      round(down / (len(peers) * cfg.down_bps / 8), 3),
                      sum(1 for p in peers if p.node.out),
                      sum(1 for p in peers if not p.inflight and p.done_at is None),
                      cfg.n - unfinished[0], len(cdn_node.out)))
        if unfinished[0]:
            net.at(net.now + cfg.trace_s, sample)

    wall0, cpu0 = clock(), time.process_time()
    gc_was = gc.isenabled()
    gc.disable()                 # millions of short-lived tuples; no cycles worth chasing
    try:
        sched.task_known(task, pieces)
        if cfg.origin_bps:
            per_piece = piece * 8 / cfg.origin_bps
            for i in range(pieces):
                net.at((i + 1) * per_piece, lambda i=i: sched.piece_available(task, i))
        else:
            for i in range(pieces):
                sched.piece_available(task, i)
        t = clock()
        for p in peers:
            sched.register(task, p.pid)
        stats["sched_s"] += clock() - t
        for p in peers:
            trigger(p)
        net.at(cfg.tick_s, tick)
        if cfg.trace_s:
            net.at(0.0, sample)
        while unfinished[0]:
            event = net.pop()
            if event is None:
                raise RuntimeError("the simulation ran out of events with peers unfinished")
            _, flow, timer = event
            if timer is not None:
                timer()
                continue
            p, idx, source = flow.tag
            del p.inflight[idx]
            p.near.discard(idx)
            p.results.append((idx, source))
            for dup in p.deferred.pop(idx, ()):
                p.results.append((idx, dup))
            trigger(p)
    finally:
        if gc_was:
            gc.enable()
    times = sorted(p.done_at for p in peers)
    bound = kumar_ross(size, cfg.server_up_bps, [cfg.up_bps] * cfg.n, [cfg.down_bps] * cfg.n)
    return {
        **{k: v for k, v in asdict(cfg).items() if k not in ("piece_bytes", "trace_s")},
        "pieces": pieces, "piece_bytes": piece,
        "t_s": times[-1], "median_s": statistics.median(times), "bound_s": bound,
        "ratio": times[-1] / bound, "median_ratio": statistics.median(times) / bound,
        "scheduler_cpu_s": stats["sched_s"], "schedule_calls": stats["calls"],
        "waits": stats["waits"], "transfers": net.flows_started,
        "cdn_bytes_per_file": stats["cdn_bytes"] / size,
        "wall_s": clock() - wall0, "cpu_s": time.process_time() - cpu0,
        **({"trace": trace} if cfg.trace_s else {}),
    }
