"""Disk-space prechecks and reservations.

A task's data file is preallocated at once (fallocate), so the filesystem
itself accounts for it from then on. What statvfs cannot see is space a task
will need later: the copy of the finished file at its output path. Each
in-flight task therefore holds a reservation for that, and a new task is
admitted only if free space covers its own needs, everybody else's
reservations and a floor kept free for the rest of the system.

One process owns a DiskBudget (the coordinator on a peer host, the supernode
process on a CDN node); it is not thread-safe and needs no lock because the
event loop is its only writer.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from engine.errors import NotEnoughSpace, from_oserror


def free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise from_oserror(exc, f"statvfs {path}") from exc
    return st.f_bavail * st.f_frsize


@dataclass(slots=True)
class Reservation:
    budget: DiskBudget | None
    key: str
    nbytes: int

    def release(self) -> None:
        if self.budget is not None:
            self.budget._release(self)
            self.budget = None


class DiskBudget:
    """Admits work only while the filesystem can hold it."""

    def __init__(self, floor_bytes: int = 64 << 20) -> None:
        self.floor_bytes = floor_bytes
        self._held: dict[str, int] = {}
        self._serial = itertools.count()

    @property
    def reserved(self) -> int:
        return sum(self._held.values())

    def check(self, path: str, needed: int) -> None:
        """Raise NotEnoughSpace unless ``needed`` more bytes fit at ``path``."""
        free = free_bytes(path)
        reserved = self.reserved
        if needed + self.floor_bytes + reserved > free:
            raise NotEnoughSpace(path, needed + self.floor_bytes, free, reserved)

    def reserve(self, path: str, key: str, now: int, later: int = 0) -> Reservation:
        """Check room for ``now`` bytes (about to be allocated) plus ``later``
        bytes (held until released), then hold ``later``."""
        self.check(path, now + later)
        key = f"{key}#{next(self._serial)}"
        self._held[key] = later
        return Reservation(self, key, later)

    def _release(self, reservation: Reservation) -> None:
        self._held.pop(reservation.key, None)
