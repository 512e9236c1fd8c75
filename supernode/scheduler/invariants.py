"""A full consistency check of the scheduler's state, for tests and debugging.

O(everything): never call it on the hot path. ``check`` raises
``AssertionError`` naming the first broken invariant; a failure means a bug
in the core, not bad input.
"""

from __future__ import annotations

from collections import Counter

from supernode.scheduler.model import Host, Member, Swarm
from supernode.scheduler.states import SEEDING


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"scheduler invariant broken: {what}")


def check(scheduler) -> None:
    reg = scheduler._reg  # noqa: SLF001 - the checker reads internals on purpose
    load: Counter[Host] = Counter()
    isolated_in: Counter[Host] = Counter()
    for flight in reg.open:
        _require(flight.live, "a closed flight is still open")
        load[flight.src.host] += 1
        _require(flight in flight.src.out, "a flight is missing from its source's list")
        _require(flight in flight.dst.inflight.get(flight.piece, ()),
                 "a flight is missing from its downloader's attempts")
    for sw in reg.swarms.values():
        for host in sw.blocked:
            isolated_in[host] += 1
        _check_swarm(sw)
    for peer_id, host in reg.hosts.items():
        _require(host.peer_id == peer_id, f"host {peer_id} filed under another id")
        _require(host.load == load[host], f"{host.peer_id} load {host.load} != {load[host]}")
        _require(host.isolated_in == isolated_in[host], f"{host.peer_id} isolated_in is off")
        _require(host.is_cdn or not host.members or host in reg.seen,
                 f"{host.peer_id} is registered but not watched for heartbeats")
        for task, member in host.members.items():
            _require(reg.swarms[task].members.get(host) is member, "membership is one-sided")
    for host in reg.seen:
        _require(reg.hosts.get(host.peer_id) is host, "a forgotten host is still watched")


def _check_swarm(sw: Swarm) -> None:
    n = sw.n
    for member in sw.members.values():
        _require(member.alive, "a dead member is still listed")
        for piece, flights in member.inflight.items():
            _require(piece not in member.wanted, f"piece {piece} both wanted and in flight")
            _require(bool(flights), "an empty attempt list")
            sources = [f.src.host for f in flights]
            _require(len(set(sources)) == len(sources), "two attempts from one source")
            for flight in flights:
                _require(flight.live and flight.dst is member, "a dead attempt is listed")
                src = flight.src
                _require(src.alive and src.swarm is sw, "an attempt from a member that left")
                _require(_holds(sw, src, piece), f"{src.host.peer_id} serves {piece} it lacks")
        from_cdn = sum(f.src is sw.cdn for flights in member.inflight.values() for f in flights)
        _require(member.from_cdn == from_cdn, f"{member.host.peer_id} from_cdn is off")
        if n is None:
            continue
        held = n - len(member.wanted) - len(member.inflight)
        if member is sw.cdn:
            held = sum(sw.cdn_has)
        _require(member.have == held, f"{member.host.peer_id} have={member.have} != {held}")
        _require((member.state == SEEDING) == (member.have == n), "seeding iff holding all")
    if n is None:
        return
    _require(sw.sources == sum(m.have > 0 for m in sw.members.values() if m is not sw.cdn),
             "the count of peers holding pieces is off")
    _require(sw.newcomers == sum(m.newcomer for m in sw.members.values()),
             "the count of newcomers is off")
    _require(not any(m.newcomer and m.have for m in sw.members.values()),
             "a peer holding pieces is counted as a newcomer")
    buckets: dict[int, set[int]] = {}
    for piece in range(n):
        alive = [m for m in sw.holders[piece] if m.alive]
        _require(len(set(alive)) == len(alive), f"piece {piece} lists a holder twice")
        for m in alive:
            _require(sw.members.get(m.host) is m and _holds(sw, m, piece),
                     f"piece {piece} lists a holder that lacks it")
        _require(sw.peer_count[piece] == len(alive), f"piece {piece} peer count is off")
        cdn = sw.cdn_has[piece]
        _require(not cdn or sw.cdn is not None, "the CDN left but still holds pieces")
        _require(sw.count[piece] == len(alive) + cdn, f"piece {piece} replica count is off")
        _require((piece in sw.cdn_only) == (cdn and not alive), f"cdn_only is off for {piece}")
        if sw.count[piece]:
            buckets.setdefault(sw.count[piece], set()).add(piece)
    _require(buckets == sw.buckets, "buckets do not match the counts")
    _require(sw.levels == sorted(buckets), "levels do not match the buckets")
    for member in sw.members.values():
        if member is sw.cdn:
            continue
        for piece in range(n):
            if piece not in member.wanted and piece not in member.inflight:
                _require(member in sw.holders[piece], f"a holder of {piece} is not listed")


def _holds(sw: Swarm, member: Member, piece: int) -> bool:
    if member is sw.cdn:
        return bool(sw.cdn_has[piece])
    return piece not in member.wanted and piece not in member.inflight
