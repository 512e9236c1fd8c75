"""Idle exit: the daemon leaves once it has had no request and served no peer
for ``seconds``.

One timer, no polling. ``arm`` starts an idle period when the daemon is not
busy and reads the upload counter; when the period ends the counter is read
again. Serving other peers counts as use: a daemon that exits while the
swarm still fetches from it takes a source away, so pieces uploaded during
the period start another one. ``cancel`` ends the period (a request came in).
One event loop owns it; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine

log = logging.getLogger(__name__)


class IdleExit:
    def __init__(self, seconds: float, label: str, *, busy: Callable[[], bool],
                 uploaded: Callable[[], Awaitable[int]],
                 spawn: Callable[[Coroutine], None], exit: Callable[[], None]) -> None:
        self.seconds, self.label = seconds, label
        self._busy, self._uploaded, self._spawn, self._exit = busy, uploaded, spawn, exit
        self._timer: asyncio.TimerHandle | None = None
        self._uploads_at_start = 0

    def arm(self) -> None:
        """Start an idle period, unless one runs, the daemon is busy or idle exit is off."""
        if self.seconds > 0 and not self._busy() and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self.seconds, lambda: self._spawn(self._expired()))
            self._spawn(self._note_uploads())

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _note_uploads(self) -> None:
        self._uploads_at_start = await self._uploaded()

    async def _expired(self) -> None:
        self._timer = None
        uploaded = await self._uploaded()
        if self._busy() or self._timer is not None:
            return                          # a request came in meanwhile
        if uploaded != self._uploads_at_start:
            self.arm()                      # it served peers: another period
            return
        log.info("no requests and no uploads for %s; exiting", self.label)
        self._exit()
