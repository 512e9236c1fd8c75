"""Tunables of the scheduler core, declared once, checked when built."""

from __future__ import annotations

from dataclasses import dataclass, fields

from engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Every knob of the scheduler core. Times are seconds of the injected clock.

    Upload slots are per host and shared by all its tasks: a dfdaemon has one
    upload server whatever number of tasks it seeds. A peer may announce its
    own limit when it registers; these are the defaults.
    """

    # Upload slots are best matched to the downloaders' parallelism: a
    # downloader with ``parallel`` pieces in flight takes down/parallel per
    # flow, so a source should split its upload into about
    # parallel x up/down flows, 4 for a dfdaemon (parallel 4, symmetric
    # link), 8 for a 200 Mbit/s CDN feeding 100 Mbit/s peers. More slots make
    # every flow slower, which starves the receivers and slows the spread of
    # new pieces; perf/sim (40 / 200 peers, 100 x 1 MiB): peer slots 8 and CDN
    # 16 gave T/bound 1.24 / 1.33, 4 and 8 give 1.13 / 1.17. (At 64 CDN
    # slots the first pieces landed only after ~2.7 s.)
    peer_upload_slots: int = 4
    cdn_upload_slots: int = 8
    # A swarm's first second: while more peers that asked hold nothing than
    # the CDN has slots, a peer source serves ``spread_slots`` transfers at
    # a time and the CDN ``cdn_spread_slots``. A first piece sent at full
    # speed makes its receiver a source four times sooner than one of four
    # quarter-speed transfers, so the sources double every piece time
    # instead of growing fivefold every four (perf/sim, 10,000 peers, with
    # the sample below: slowest peer T/bound 1.29 without the cap, 1.24
    # with it). 0 turns the cap off.
    spread_slots: int = 1
    cdn_spread_slots: int = 2
    # The cap ends once the newcomers are fewer than 1/``spread_tail`` of
    # the peer sources (0: only when the last newcomer holds a piece). At
    # the end of the spread the few newcomers left need a few slots, and
    # the fair share (below) kept every peer that held a piece from
    # downloading while more than two of them remained: at 1,000 peers the
    # swarm's transfers fell from 256 to 8 for ~0.3 s (perf/sim trace).
    # perf/sim, slowest peer T/bound, seeds 1-3: 10,000 peers 1.2051,
    # 1.2033, 1.2055 -> 1.1930, 1.1964, 1.1984 (16: 1.1975-1.2034; 64:
    # 1.1963-1.1995); 1,000 peers, 8 seeds, 1.1628-1.1681 -> 1.1555-1.1609;
    # 40 and 200 peers unchanged within the seeds' spread.
    spread_tail: int = 32
    # A downloader with fewer than this many attempts open, for whom no
    # holder of a wanted piece has a free slot, may take one slot over a
    # holder's limit (the holder's upload is shared one flow more ways).
    # Without it the peers that happen to miss the free slots fall behind,
    # and the slowest peer sets T(N). perf/sim, 10,000 peers, with the
    # spread and sample below: slowest peer T/bound 1.24 -> 1.20; 0 turns
    # it off.
    overbook_below: int = 4
    # A downloader never has more than this many attempts open in one task,
    # whatever it asks for; it bounds what a peer that never reports can hold.
    max_in_flight: int = 16
    # Source choice looks at most this many holders of a piece (a random
    # window), so a decision costs the same with 10 or 10,000 holders.
    # Pieces whose holders are all busy may be tried ``max_probes`` times per
    # decision before the peer is told to wait; it bounds the worst decision.
    # In a saturated swarm free slots are few, and a wider search finds them
    # instead of answering "wait" (perf/sim, 1,000 peers: 16 / 32 gave T/bound
    # 1.22, 64 / 100 1.19; bench_scheduler still well inside its targets).
    source_sample: int = 64
    max_probes: int = 100
    # Endgame: once everything a peer lacks is in flight and at most this
    # many pieces remain, a piece whose attempt is ``endgame_delay`` old may
    # be requested from up to ``endgame_copies`` sources at once.
    endgame_pieces: int = 4
    endgame_copies: int = 2
    endgame_delay: float = 2.0
    assignment_timeout: float = 30.0
    heartbeat_timeout: float = 30.0
    # Source health (see ``health``): a failure adds its weight to the
    # source's record, a delivery adds one success; the record covers about
    # the last ``health_window`` outcomes. A source is isolated in a task
    # when its weighted failures there reach ``task_isolate_after`` and make
    # up ``failure_ratio`` of its record; host-wide likewise with
    # ``host_isolate_after``, or when it is isolated in ``host_isolate_tasks``
    # tasks.
    failure_weight: int = 1
    timeout_weight: int = 1
    corrupt_weight: int = 3
    task_isolate_after: int = 3
    host_isolate_after: int = 10
    host_isolate_tasks: int = 2
    failure_ratio: float = 0.5
    health_window: int = 32
    isolation_time: float = 300.0
    # A "wait" answer carries wait_ms x [0.5, 1.5), drawn from the seeded rng.
    wait_ms: int = 200
    pending_wait_ms: int = 200
    # "random" or "rarest". Measured with perf/sim (200 peers, 100 x 1 MiB,
    # CDN 200 Mbit/s, peers 100/100): rarest first T/bound 2.40 and the CDN
    # sends 3.2 copies; random 1.76 and 1.9 copies. Strict global rarest
    # first sends every asker after the same few pieces, whose holders sit at
    # their slot limit while other peers upload nothing. With a CDN that
    # never leaves, rarity protects nothing that random order loses.
    piece_order: str = "random"

    def __post_init__(self) -> None:
        if self.piece_order not in ("random", "rarest"):
            raise ConfigError(f"scheduler.piece_order must be random or rarest, "
                              f"got {self.piece_order!r}")
        for f in fields(self):
            if f.name == "piece_order":
                continue
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"scheduler.{f.name} must be a number, got {value!r}")
            if value < 0:
                raise ConfigError(f"scheduler.{f.name} must be >= 0, got {value!r}")
        if not 0 < self.failure_ratio <= 1:
            raise ConfigError(
                f"scheduler.failure_ratio must be in (0, 1], got {self.failure_ratio}")
        for name in ("max_in_flight", "source_sample", "max_probes", "endgame_copies",
                     "health_window",
                     "task_isolate_after", "host_isolate_after", "host_isolate_tasks",
                     "failure_weight", "timeout_weight", "corrupt_weight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"scheduler.{name} must be >= 1")
        # A zero endgame delay would duplicate a piece in the very call that
        # first assigned it.
        for name in ("assignment_timeout", "heartbeat_timeout", "isolation_time",
                     "endgame_delay"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"scheduler.{name} must be > 0")

    def weight(self, reason: str) -> int:
        """How much a failed attempt counts against its source."""
        if reason == "corrupt":
            return self.corrupt_weight
        if reason == "timeout":
            return self.timeout_weight
        if reason == "refused":
            # 503: the source's slots were full. Several supernodes share a
            # host's slots, so this is load, not misbehaviour.
            return 0
        return self.failure_weight
