"""One schedule decision: which pieces a peer gets, and from whom.

Not thread-safe; one writer applies events one at a time. ``fill`` walks the
peer's wanted pieces rarest first (``policy.rarest_first``), asks the policy
for a source for each (``policy.pick_source``) and opens a flight per grant,
until the request is full or ``max_probes`` pieces found no free source: that
bound keeps the worst decision cheap in a saturated swarm, at the price of
sometimes answering "wait" while a free source exists deeper in the list
(the next call starts at other random points). Then, if the peer is down to
its last few pieces, all in flight, it adds endgame duplicates.
"""

from __future__ import annotations

from random import Random

from supernode.scheduler.config import SchedulerConfig
from supernode.scheduler.model import Host, Member, Swarm
from supernode.scheduler.policy import endgame, pick_source, random_order, rarest_first
from supernode.scheduler.registry import Registry
from supernode.scheduler.results import Grant
from supernode.scheduler.states import HEALTHY

_NOTHING: frozenset = frozenset()


def fill(reg: Registry, member: Member, room: int, now: float, cfg: SchedulerConfig,
         rng: Random) -> list[Grant]:
    """Grant up to ``room`` pieces: rarest first, then endgame duplicates."""
    sw = member.swarm
    cdn = sw.cdn
    # While the CDN cannot serve, pieces only it holds are skipped up
    # front instead of each costing a probe.
    skip = _NOTHING if cdn is not None and _serves(sw, cdn.host) else sw.cdn_only
    holders, cdn_has, blocked = sw.holders, sw.cdn_has, sw.blocked
    location, sample = member.host.location, cfg.source_sample
    deadline = now + cfg.assignment_timeout
    used: set[Host] = set()
    grants: list[Grant] = []
    misses = cfg.max_probes
    # A piece only the CDN holds and is already sending to someone will have
    # a peer replica shortly; sending it out again would spend the CDN's
    # upload, the swarm's scarcest capacity, on bytes the swarm is about to
    # have. Such pieces wait until nothing else can be granted.
    leaving = {f.piece for f in cdn.out} if cdn is not None and cdn.out else _NOTHING
    deferred: list[int] = []
    peer_count = sw.peer_count
    if cfg.piece_order == "rarest":
        order = rarest_first(member.wanted, sw.count, sw.buckets, sw.levels, rng, skip)
    else:
        order = random_order(member.wanted, sw.count, rng, skip)
    for piece in order:
        if piece in leaving and not peer_count[piece]:
            deferred.append(piece)
            continue
        source = pick_source(holders[piece], cdn if cdn_has[piece] else None,
                             location=location, rng=rng, sample=sample,
                             avoid=used, blocked=blocked)
        if source is None:
            misses -= 1
            if not misses:
                return grants
            continue
        reg.assign(member, source, piece, now, deadline)
        used.add(source.host)
        grants.append(Grant(piece, source.host.peer_id))
        if len(grants) >= room:
            return grants
    for piece in deferred if not grants and not member.inflight else ():
        source = pick_source(holders[piece], cdn, location=location, rng=rng,
                             sample=sample, avoid=used, blocked=blocked)
        if source is not None:
            reg.assign(member, source, piece, now, deadline)
            used.add(source.host)
            grants.append(Grant(piece, source.host.peer_id))
            if len(grants) >= room:
                return grants
    for piece in endgame(member.inflight, len(member.wanted), pieces=cfg.endgame_pieces,
                         copies=cfg.endgame_copies, opened_by=now - cfg.endgame_delay):
        taken = {flight.src.host for flight in member.inflight[piece]}
        source = pick_source(holders[piece], cdn if cdn_has[piece] else None,
                             location=location, rng=rng, sample=sample,
                             avoid=used, exclude=taken, blocked=blocked)
        if source is not None:
            reg.assign(member, source, piece, now, deadline)
            used.add(source.host)
            grants.append(Grant(piece, source.host.peer_id))
            if len(grants) >= room:
                break
    return grants


def stranded(member: Member) -> bool:
    """True if a missing piece has no holder and never will (the CDN is out)."""
    sw = member.swarm
    cdn = sw.cdn
    if cdn is not None and cdn.host.health == HEALTHY and cdn.host not in sw.blocked:
        return False                        # the CDN has or will get every piece
    peer_count = sw.peer_count
    return any(not peer_count[p] for p in member.wanted)


def _serves(sw: Swarm, host: Host) -> bool:
    return host.load < host.slots and host.health == HEALTHY and host not in sw.blocked
