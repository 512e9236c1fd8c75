"""One schedule decision: which pieces a peer gets, and from whom.

Not thread-safe; one writer applies events one at a time. First the peer's
``fair_share`` bounds how many attempts it may hold: while the swarm is
young, a newcomer's first piece (a new source) comes before a fourth piece
for a peer that already uploads. Then ``fill`` grants in passes:

1. The CDN, new pieces. Its upload is the only way new pieces get in, so
   whenever it has a free slot it sends pieces no peer holds yet
   (super-seeding). It serves one downloader at most its share of its slots
   (``cdn_share``), so its first pieces land at many peers, each of which
   can pass its piece on, rather than at a few.
2. Peers. Walk the wanted pieces some peer holds, in random order
   (``policy.random_order``; rarest first if so configured), and ask
   ``policy.pick_source`` for the least-loaded holder with a free slot, the
   CDN behind every unused peer. It stops when the request is full or
   ``max_probes`` pieces found no free source: that bound keeps the worst
   decision cheap in a saturated swarm, at the price of sometimes answering
   "wait" while a free source exists deeper in the list (the next call
   starts at other random points).
3. The CDN again, for what peers could not fill: fewest peer replicas first.
   A piece it is already sending and no peer holds is granted only to a peer
   with nothing else to do: a peer replica is due shortly.
4. Overbooking: a peer left with fewer than ``overbook_below`` attempts
   may take one slot over a holder's limit, so that the peers who keep
   missing the free slots do not fall behind the swarm.
5. Endgame: if the peer is down to its last few pieces, all in flight, a
   second source for a piece whose attempt has run for a while.

While a large swarm is young (``spread_caps``), every source serves fewer
transfers at once, so that first pieces travel at full speed, and there is
no overbooking.
"""

from __future__ import annotations

from random import Random

from supernode.scheduler.config import SchedulerConfig
from supernode.scheduler.model import Host, Member, Swarm
from supernode.scheduler.policy import (
    capped, endgame, pick_source, random_order, rarest_first)
from supernode.scheduler.registry import Registry
from supernode.scheduler.results import Grant
from supernode.scheduler.states import HEALTHY

_NOTHING: frozenset = frozenset()


def fill(reg: Registry, member: Member, room: int, now: float, cfg: SchedulerConfig,
         rng: Random) -> list[Grant]:
    """Grant up to ``room`` pieces (fewer if ``fair_share`` says so), in the passes above."""
    sw = member.swarm
    share = fair_share(sw, member, cfg)
    room = min(room, share - len(member.inflight))
    if room <= 0:
        return []
    holders, blocked = sw.holders, sw.blocked
    location, sample = member.host.location, cfg.source_sample
    deadline = now + cfg.assignment_timeout
    used: set[Host] = set()
    grants: list[Grant] = []

    def grant(source: Member, piece: int) -> bool:
        """Open the flight; True when the request is full."""
        reg.assign(member, source, piece, now, deadline)
        used.add(source.host)
        grants.append(Grant(piece, source.host.peer_id))
        return len(grants) >= room

    cdn = sw.cdn
    spread, cdn_spread = spread_caps(sw, cfg)
    if cdn is not None and _serves(sw, cdn.host, cdn_spread):
        for piece in _cdn_pieces(member, sw, rng, cdn_spread, fresh=True)[0]:
            if grant(cdn, piece):
                return grants
    misses = cfg.max_probes
    if cfg.piece_order == "rarest":
        order = rarest_first(member.wanted, sw.count, sw.buckets, sw.levels, rng, sw.cdn_only)
    else:
        order = random_order(member.wanted, sw.peer_count, rng)
    # The CDN stays a candidate here, behind every unused peer, so that one
    # request spreads over sources; ``cdn_share`` still bounds it.
    cdn_has = sw.cdn_has
    cdn_cap = cdn_share(sw, cdn.host, cdn_spread) if cdn is not None else 0
    for piece in order:
        backup = cdn if cdn_has[piece] and member.from_cdn < cdn_cap else None
        source = pick_source(holders[piece], backup,
                             location=location, rng=rng, sample=sample, avoid=used,
                             blocked=blocked, cap=spread, cdn_cap=cdn_spread)
        if source is not None:
            if grant(source, piece):
                return grants
        else:
            misses -= 1
            if not misses:
                break
    if cdn is not None and _serves(sw, cdn.host, cdn_spread):
        pieces, spares = _cdn_pieces(member, sw, rng, cdn_spread, fresh=False)
        if not pieces and not grants and not member.inflight:
            pieces = spares             # nothing else exists: do not starve
        for piece in pieces:
            if grant(cdn, piece):
                return grants
    if not spread and len(member.inflight) < cfg.overbook_below:
        misses = cfg.max_probes
        for piece in random_order(member.wanted, sw.peer_count, rng):
            source = pick_source(holders[piece], None, location=location, rng=rng,
                                 sample=sample, avoid=used, blocked=blocked, over=1)
            if source is not None:
                if grant(source, piece) or len(member.inflight) >= cfg.overbook_below:
                    return grants
            else:
                misses -= 1
                if not misses:
                    break
    for piece in endgame(member.inflight, len(member.wanted), pieces=cfg.endgame_pieces,
                         copies=cfg.endgame_copies, opened_by=now - cfg.endgame_delay):
        taken = {flight.src.host for flight in member.inflight[piece]}
        source = pick_source(holders[piece], cdn if sw.cdn_has[piece] else None,
                             location=location, rng=rng, sample=sample,
                             avoid=used, exclude=taken, blocked=blocked, cap=spread,
                             cdn_cap=cdn_spread)
        if source is not None and grant(source, piece):
            break
    return grants


def fair_share(sw: Swarm, member: Member, cfg: SchedulerConfig) -> int:
    """How many attempts ``member`` may hold at once.

    The task's upload slots (``peer_upload_slots`` for each peer holding a
    piece, plus the CDN's) are shared out evenly, but a peer that holds
    nothing yet gets at least one, before the peers that hold something,
    who get none while the newcomers outnumber the slots. A newcomer's first
    piece adds a source to the swarm; a fourth piece in flight at a peer
    that already uploads adds nothing (perf/sim, 1000 peers: T/bound 1.23
    against 1.25 with one attempt always allowed). Once every peer holds a
    piece the share is the slots per peer, as many as a peer asks for.
    Only peers that asked count as newcomers: a registered peer that never
    asks must not hold the others back. (One that asked and went quiet
    counts until it leaves or its heartbeat times out.) Once no asking peer
    is a newcomer, a peer may hold one attempt over the even share: the
    successor it asks for ahead of time.
    """
    cdn = sw.cdn
    cap, cdn_cap = spread_caps(sw, cfg)
    slots = (sw.sources * (cap or cfg.peer_upload_slots)
             + (capped(cdn.host.slots, cdn_cap) if cdn is not None else 0))
    newcomer = max(1, slots // max(1, len(sw.members) - 1))
    if not member.have:
        if not member.newcomer:
            member.newcomer = True
            sw.newcomers += 1
        return newcomer
    # One more for the successor a peer asks for while a fetch is half done
    # (engine.download.p2p): without it that request always came back "wait".
    return (slots - sw.newcomers * newcomer) // sw.sources + (0 if sw.newcomers else 1)


def cdn_share(sw: Swarm, cdn: Host, cap: int = 0) -> int:
    """How many attempts the CDN may serve one downloader at once: its slots
    (under the spread ``cap``) over the task's peers, at least one."""
    return max(1, capped(cdn.slots, cap) // max(1, len(sw.members) - 1))


def spread_caps(sw: Swarm, cfg: SchedulerConfig) -> tuple[int, int]:
    """The upload slots a peer source and the CDN may use in this swarm now
    (0: their own limit).

    While peers that asked hold nothing (at least 1/``spread_tail`` as many
    as the peer sources), in a swarm of more peers than the CDN has slots,
    sources serve ``spread_slots`` (the CDN ``cdn_spread_slots``) transfers
    at a time: see ``SchedulerConfig.spread_slots`` and ``spread_tail``. A
    small swarm, or a lone downloader, never sees the cap.
    """
    newcomers, tail = sw.newcomers, cfg.spread_tail
    if (newcomers and len(sw.members) - 1 > cfg.cdn_upload_slots
            and (not tail or newcomers * tail >= sw.sources)):
        return cfg.spread_slots, cfg.cdn_spread_slots
    return 0, 0


def _cdn_pieces(member: Member, sw: Swarm, rng: Random, cdn_cap: int, *,
                fresh: bool) -> tuple[list[int], list[int]]:
    """The pieces the CDN should send ``member`` now, fewest peer replicas
    first and at most its share (``fresh``: only pieces no peer holds); and
    as many to fall back on that the CDN is already sending elsewhere and no
    peer holds."""
    cdn = sw.cdn
    left = min(cdn_share(sw, cdn.host, cdn_cap) - member.from_cdn,
               capped(cdn.host.slots, cdn_cap) - cdn.host.load)
    if left <= 0:
        return [], []
    cdn_has, peer_count = sw.cdn_has, sw.peer_count
    leaving = {f.piece for f in cdn.out} if cdn.out else _NOTHING
    out: list[int] = []
    spares: list[int] = []
    # For a piece the CDN holds, count = peer replicas + 1: walking the
    # counts upward walks the peer replicas upward.
    for piece in rarest_first(member.wanted, sw.count, sw.buckets, sw.levels, rng):
        if not cdn_has[piece]:
            continue
        if peer_count[piece]:
            if fresh:
                break
        elif piece in leaving:
            if len(spares) < left:
                spares.append(piece)
            continue
        out.append(piece)
        if len(out) >= left:
            break
    return out, spares


def stranded(member: Member) -> bool:
    """True if a missing piece has no holder and never will (the CDN is out)."""
    sw = member.swarm
    cdn = sw.cdn
    if cdn is not None and cdn.host.health == HEALTHY and cdn.host not in sw.blocked:
        return False                        # the CDN has or will get every piece
    peer_count = sw.peer_count
    return any(not peer_count[p] for p in member.wanted)


def _serves(sw: Swarm, host: Host, cap: int = 0) -> bool:
    return (host.load < capped(host.slots, cap) and host.health == HEALTHY
            and host not in sw.blocked)
