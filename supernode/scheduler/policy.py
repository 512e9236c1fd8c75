"""The baseline scheduling policy, as pure functions of plain inputs.

Nothing here mutates state or reads a clock; randomness comes from the
``random.Random`` passed in, so a seeded generator makes every choice
reproducible. The core (``core.Scheduler``) feeds these functions its own
sets, lists and ``Member`` objects; tests feed small hand-built ones.

Piece choice: random order by default, rarest first as the baseline.
    ``random_order`` spreads requests evenly over the pieces, and so over the
    holders' upload slots. Rarest first (below) is kept as the baseline
    policy the issue asked for, selectable with ``piece_order``.
    Pieces are grouped by replica count (``buckets``; ``levels`` is the
    sorted list of non-empty counts). Usually we walk the levels upward and
    intersect each bucket with the wanted set (C-speed set operations,
    stopping as soon as enough pieces were taken); when the peer wants fewer
    than half as many pieces as there are levels, sorting its wanted pieces
    by count is cheaper. Either way the cost is bounded by the piece count,
    never by the peer count.
    Ties are broken by rotating each group of equal rarity to a random start:
    the first piece of a group is uniformly random and the rest follow in
    set order. That costs one random number per group instead of a shuffle;
    the trade-off is that the 2nd..kth picks of one request are correlated,
    which only matters when several pieces tie, and peers still start at
    independent random points.

Source choice: least-loaded healthy holder with a free slot.
    Looking at every holder of a popular piece would be O(peers), so we look
    at a window of at most ``sample`` holders starting at a random offset
    (one random number, one slice) plus the CDN. Inside it, a holder is
    eligible when it is alive, healthy (in this task and host-wide), under
    its upload-slot limit and not excluded. Among eligible ones the order is:
    not already used in this request, then a peer before the CDN, then same
    location, then lowest load/slots. The price of the window: a free or
    same-location holder outside it is not seen this time; with 16 random
    holders and peers mostly below their limit that is rare, and the next
    call samples again.

Endgame: when a peer's every missing piece is in flight and few remain, a
    piece whose attempt has run for a while may be asked from a second source
    (``endgame``); the first copy to land closes the others, so the extra
    slot is held only briefly.

Isolation: each source keeps a record of weighted failures (corrupt weighs
    most) and deliveries over roughly its last ``window`` outcomes
    (``tally``). It is failing when the failures reach a threshold *and* make
    up a large enough share of the record (``failing``): a count alone would
    sooner or later isolate the CDN or any busy peer for a background failure
    rate that a small peer never reaches, while a ratio alone would isolate a
    newcomer for one unlucky transfer.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence, Set
from itertools import groupby
from random import Random
from typing import Protocol, TypeVar

from supernode.scheduler.states import HEALTHY

_NOTHING: frozenset = frozenset()


class HostView(Protocol):
    """What source choice reads of a host (``model.Host`` is one)."""

    @property
    def location(self) -> str: ...
    @property
    def load(self) -> int: ...
    @property
    def slots(self) -> int: ...
    @property
    def health(self) -> str: ...


class HolderView(Protocol):
    """What source choice reads of a holder (``model.Member`` is one)."""

    @property
    def host(self) -> HostView: ...
    @property
    def alive(self) -> bool: ...


class AttemptView(Protocol):
    """What endgame reads of an open attempt (``model.Flight`` is one)."""

    @property
    def opened(self) -> float: ...


H = TypeVar("H", bound=HolderView)


def rarest_first(wanted: Set[int], count: Sequence[int], buckets: Mapping[int, Set[int]],
                 levels: Sequence[int], rng: Random,
                 skip: Set[int] = _NOTHING) -> Iterator[int]:
    """Yield the pieces of ``wanted`` that someone holds, rarest first.

    Pieces of equal rarity come in random order (see the module docstring).
    Pieces with no replica, and pieces in ``skip``, are never yielded. The
    generator is lazy and may be abandoned after the first few pieces. The
    caller may remove pieces already yielded from ``wanted`` while it runs
    (the core removes each piece it assigns), but must not change the counts.
    """
    if len(levels) <= 2 * len(wanted):
        for level in levels:
            group = buckets[level] & wanted
            if skip:
                group -= skip
            if group:
                yield from _rotated(list(group), rng)
    else:
        pool = wanted - skip if skip else wanted
        for level, run in groupby(sorted(pool, key=count.__getitem__), key=count.__getitem__):
            if level:
                yield from _rotated(list(run), rng)


def random_order(wanted: Set[int], count: Sequence[int], rng: Random,
                 skip: Set[int] = _NOTHING, first: int = 8) -> Iterator[int]:
    """Yield the pieces of ``wanted`` that someone holds, in random order.

    The default piece order (see ``SchedulerConfig.piece_order`` for why it
    beats rarest first here). The first ``first`` pieces are a uniform random
    sample; the rest follow from a random start, which is all a decision
    usually needs and costs O(1) random numbers instead of a shuffle.
    Same contract as ``rarest_first``: lazy, never yields a piece without a
    replica or in ``skip``.
    """
    pool = list(wanted)
    n = len(pool)
    if not n:
        return
    head = rng.sample(pool, min(first, n))
    for piece in head:
        if count[piece] and piece not in skip:
            yield piece
    if n <= first:
        return
    taken = set(head)
    start = int(rng.random() * n)
    for piece in pool[start:] + pool[:start]:
        if piece not in taken and count[piece] and piece not in skip:
            yield piece


def _rotated(group: list[int], rng: Random) -> list[int]:
    if len(group) == 1:
        return group
    start = int(rng.random() * len(group))     # randrange costs 10x this, in Python
    return group[start:] + group[:start]


def capped(slots: int, cap: int) -> int:
    """A host's upload slots under a spread cap (``cap`` 0: no cap)."""
    return min(slots, cap) if cap else slots


def pick_source(holders: Sequence[H], cdn: H | None, *, location: str, rng: Random,
                sample: int = 16, avoid: Collection[HostView] = _NOTHING,
                exclude: Collection[HostView] = _NOTHING,
                blocked: Collection[HostView] = _NOTHING, cap: int = 0,
                cdn_cap: int = 0, over: int = 0) -> H | None:
    """Choose where to fetch a piece from, or None if no holder can serve now.

    ``holders`` are the peers holding the piece (dead entries allowed),
    ``cdn`` the CDN if it holds it. ``avoid``: hosts already chosen in this
    request (used only when nothing else is eligible). ``exclude``: hosts that
    must not be chosen (endgame: the sources already fetching this piece).
    ``blocked``: hosts isolated in this task. ``cap`` / ``cdn_cap``: serve
    with at most this many of a peer's / the CDN's slots (0: all of them).
    ``over``: a peer may exceed its limit by this many (overbooking; never
    a peer whose limit is 0).
    """
    n = len(holders)
    if n > sample:
        start = int(rng.random() * n)
        window = holders[start:start + sample]
        if len(window) < sample:
            window = [*window, *holders[:sample - len(window)]]
    else:
        window = holders
    best = None
    best_key = 99.0
    for member in window:
        host = member.host
        load, slots = host.load, host.slots
        if cap and cap < slots:         # capped(), inline: this loop is the hot path
            slots = cap
        if slots:                       # a host that serves nobody is never overbooked
            slots += over
        # The busy check comes first: in a saturated swarm it rejects most.
        if (load >= slots or not member.alive or host.health != HEALTHY
                or host in blocked or host in exclude):
            continue
        # Lexicographic order packed into one float: avoid (8) > CDN (4) >
        # other location (2) > load fraction (< 1).
        key = load / slots
        if host.location != location:
            key += 2.0
        if host in avoid:
            key += 8.0
        if key < best_key:
            best, best_key = member, key
            if not key:
                break                   # idle, near and unused: nothing beats it
    if cdn is not None and best_key >= 4.0:
        host = cdn.host
        slots = capped(host.slots, cdn_cap)
        if (host.load < slots and host.health == HEALTHY and cdn.alive
                and host not in blocked and host not in exclude):
            key = 4.0 + host.load / slots + (8.0 if host in avoid else 0.0)
            if host.location != location:
                key += 2.0
            if key < best_key:
                best = cdn
    return best


def endgame(inflight: Mapping[int, Sequence[AttemptView]], wanted: int, *, pieces: int,
            copies: int, opened_by: float) -> list[int]:
    """Pieces that may get one more concurrent attempt, fewest attempts first.

    Endgame starts only when nothing is ``wanted`` any more (every missing
    piece is in flight) and at most ``pieces`` remain. A piece qualifies when
    it has fewer than ``copies`` attempts and its newest one was opened by
    ``opened_by``: a fresh attempt is given time to finish, otherwise a
    small file would be fetched twice by every peer.
    """
    if wanted or not inflight or len(inflight) > pieces:
        return []
    return sorted((p for p, attempts in inflight.items()
                   if len(attempts) < copies and max(a.opened for a in attempts) <= opened_by),
                  key=lambda p: len(inflight[p]))


def tally(fails: float, oks: float, weight: int, window: int) -> tuple[float, float]:
    """A source's record after one more outcome (``weight`` 0: delivered).

    Both counts are halved whenever their sum outgrows ``window``, so the
    record reflects roughly the last ``window`` outcomes and old history fades.
    """
    if weight:
        fails += weight
    else:
        oks += 1
    if fails + oks > window:
        return fails / 2, oks / 2
    return fails, oks


def failing(fails: float, oks: float, *, threshold: int, ratio: float) -> bool:
    """Enough weighted failures, and failures making up at least ``ratio`` of the record."""
    return fails >= threshold and fails >= ratio * (fails + oks)


def isolate_host(fails: float, oks: float, isolated_in: int, *, threshold: int,
                 ratio: float, tasks: int) -> bool:
    """A host failing too much overall, or isolated in ``tasks`` tasks, is isolated everywhere."""
    return isolated_in >= tasks or failing(fails, oks, threshold=threshold, ratio=ratio)
