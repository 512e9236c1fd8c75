"""Which sources each peer was sent to, for which pieces, until it reports them.

The service checks every reported result against this ledger: a peer may
report a piece from a source only if it was granted that piece from that
source (or the source holds it); anything else is refused as bad input.

Why not the scheduler's open flights: a flight ends when its deadline passes
or its source is dropped, but the downloader may have fetched the piece in
time and report it a moment later. That report is honest and must be taken.
The ledger keeps a grant until the peer reports the piece, leaves the task,
or is dropped; so it holds at most one entry per (peer, task, piece).

Not thread-safe; the service's event loop is its only user.
"""

from __future__ import annotations

from engine.types import PeerId, TaskId


class GrantLedger:
    def __init__(self) -> None:
        self._tasks: dict[TaskId, dict[PeerId, dict[int, set[PeerId]]]] = {}

    def grant(self, task: TaskId, peer: PeerId, piece: int, source: PeerId) -> None:
        self._tasks.setdefault(task, {}).setdefault(peer, {}).setdefault(piece, set()).add(source)

    def granted(self, task: TaskId, peer: PeerId, piece: int, source: PeerId) -> bool:
        return source in self._tasks.get(task, {}).get(peer, {}).get(piece, ())

    def settle(self, task: TaskId, peer: PeerId, piece: int, source: PeerId, ok: bool) -> None:
        """A result came in: a success closes the piece, a failure that one source."""
        pieces = self._tasks.get(task, {}).get(peer)
        if pieces is None or piece not in pieces:
            return
        if ok:
            del pieces[piece]
        else:
            pieces[piece].discard(source)
            if not pieces[piece]:
                del pieces[piece]

    def forget_peer(self, peer: PeerId, task: TaskId | None = None) -> None:
        tasks = [task] if task is not None else list(self._tasks)
        for t in tasks:
            peers = self._tasks.get(t)
            if peers is not None:
                peers.pop(peer, None)
                if not peers:
                    del self._tasks[t]

    def forget_task(self, task: TaskId) -> None:
        self._tasks.pop(task, None)

    def __len__(self) -> int:
        return sum(len(p) for peers in self._tasks.values() for p in peers.values())
