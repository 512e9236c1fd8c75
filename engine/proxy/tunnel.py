"""CONNECT tunnels of the proxy, and the front door that tells them apart.

With ``HTTPS_PROXY`` pointing at the daemon, Docker, containerd and Podman
send every https connection as ``CONNECT host:443`` and then speak TLS end
to end. Nothing inside can come from the swarm: the proxy sees no URL, and
reading it would take a CA that every client trusts. What the proxy owes
such a client is the connection itself, so that the one proxy setting a
runtime has does not break its https traffic. A tunnel may reach only the
ports in ``--tunnel-ports`` (443 by default, as in common proxies), so the
daemon is not a way into every service its host can reach.

aiohttp parses a CONNECT but keeps the bytes after it for a websocket
reader, so tunnels never reach it. ``FrontDoor`` is the protocol of every
accepted connection: it reads until it can tell the first request's method.
Anything but CONNECT is handed, with the bytes read so far, to aiohttp's
own protocol on the same transport (``set_protocol``). A CONNECT head is
read to its blank line and becomes a ``Tunnel``. (A CONNECT later on a
keep-alive connection reaches aiohttp and gets a 405: clients open a fresh
connection for each tunnel.)

A tunnel connects to its target (``CONNECT_TIMEOUT``), answers 200, and two
``_Pipe`` protocols copy bytes, one per direction. Flow control: when one
side's write buffer fills, the other side stops reading, and TCP slows its
sender. An EOF is passed on as a half-close; the tunnel ends when both sides
have sent theirs, or when either connection is lost. Before the 200 an error
is answered and the connection closed: 400 (not a CONNECT head), 403 (a port
not allowed), 431 (head over ``HEAD_LIMIT``), 502 (cannot connect), 504
(the connect timed out).

One event loop owns everything here; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from engine.errors import BadInput
from engine.proxy.rules import connect_target, plain_response

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 10.0
HEAD_LIMIT = 16 << 10
HEAD_TIMEOUT = 30.0   # from accept to a first request line we can tell
_CONNECT = b"CONNECT "


class FrontDoor(asyncio.Protocol):
    """The first bytes of one accepted connection: a tunnel or aiohttp's."""

    def __init__(self, http: Callable[[], asyncio.Protocol], tunnels: Tunnels) -> None:
        self._http, self._tunnels = http, tunnels
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._head_end = 0                # > 0 once a CONNECT head is whole
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, transport.close)
        self._tunnels.doors.add(self)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        if self._head_end:                # the tunnel is being set up
            return
        n = min(len(buf), len(_CONNECT))
        if buf[:n] != _CONNECT[:n]:
            self._to_http()
            return
        end = buf.find(b"\r\n\r\n") if n == len(_CONNECT) else -1
        if end < 0:
            if len(buf) > HEAD_LIMIT:
                self._decided()
                refuse(self.transport, 431, f"CONNECT head over {HEAD_LIMIT} bytes")
            return
        self._decided()
        self._head_end = end + 4
        self.transport.pause_reading()   # the tunnel resumes it once it is up
        self._tunnels.open(self, bytes(buf[:end + 4]))

    def early(self) -> bytes:
        """What the client sent after its CONNECT head, without waiting for our 200."""
        return bytes(self._buf[self._head_end:])

    def eof_received(self) -> bool:
        return False                      # nothing decided yet: close

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._decided()

    def _decided(self) -> None:
        self._tunnels.doors.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _to_http(self) -> None:
        self._decided()
        proto = self._http()
        self.transport.set_protocol(proto)
        proto.connection_made(self.transport)
        proto.data_received(bytes(self._buf))
        self._buf = bytearray()


class Tunnel:
    """One established (or establishing) tunnel: a client and an upstream transport."""

    def __init__(self, owner: Tunnels, client: asyncio.Transport) -> None:
        self.owner, self.client = owner, client
        self.upstream: asyncio.Transport | None = None
        self.eofs = 0
        self.closed = False

    def eof(self) -> None:
        self.eofs += 1
        if self.eofs == 2:
            self.close()

    def close(self, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.abort() if abort else transport.close()
        self.owner.ended(self)


class _Pipe(asyncio.Protocol):
    """Reads one side of a tunnel and writes what it reads to the other."""

    def __init__(self, tunnel: Tunnel, client_side: bool) -> None:
        self.tunnel, self.client_side = tunnel, client_side
        # The upstream side holds what a server that speaks first sends
        # before our 200 is out (None once released; b"" marks its EOF).
        self.held: list[bytes] | None = None if client_side else []

    def _peer(self) -> asyncio.Transport:
        t = self.tunnel
        return t.upstream if self.client_side else t.client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.client_side:
            self.tunnel.upstream = transport  # type: ignore[assignment]

    def release(self) -> None:
        """The client side is set up: pass on what was held, and flow from now on."""
        held, self.held = self.held or [], None
        for data in held:
            if data:
                self.data_received(data)
            else:
                self.eof_received()
        if held:
            self.tunnel.upstream.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.held is not None:         # our 200 is not out yet
            self.held.append(data)
            self.tunnel.upstream.pause_reading()
            return
        if self.tunnel.closed:
            return
        self.tunnel.owner.counters["tunnel_bytes"] += len(data)
        self._peer().write(data)

    def eof_received(self) -> bool:
        if self.held is not None:
            self.held.append(b"")
            return True
        peer = self._peer()
        if peer.can_write_eof() and not peer.is_closing():
            peer.write_eof()
        self.tunnel.eof()
        return True                       # keep our own writing side open

    # This side's write buffer is what the peer's reads fill.
    def pause_writing(self) -> None:
        self._peer().pause_reading()

    def resume_writing(self) -> None:
        self._peer().resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel.close()


class Tunnels:
    """The tunnels of one proxy: opens them, counts them, closes them all.

    ``ports``: where a tunnel may go. ``counters`` is the proxy's (``tunnels``,
    ``tunnel_bytes``, ``tunnels_refused``, ``errors``); ``enter`` / ``leave``
    tell it when a tunnel starts and ends, so that an open tunnel keeps the
    daemon busy.
    """

    def __init__(self, ports: frozenset[int], counters: dict[str, int],
                 enter: Callable[[], None], leave: Callable[[], None]) -> None:
        self.ports, self.counters = ports, counters
        self._enter, self._leave = enter, leave
        self._open: set[Tunnel] = set()
        self._connecting: set[asyncio.Task] = set()
        self.doors: set[FrontDoor] = set()   # connections not yet told apart

    def open(self, door: FrontDoor, head: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(door, head))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, door: FrontDoor, head: bytes) -> None:
        client = door.transport
        try:
            host, port = connect_target(head)
        except BadInput as exc:
            refuse(client, 400, str(exc))
            return
        if port not in self.ports:
            self.counters["tunnels_refused"] += 1
            allowed = ",".join(map(str, sorted(self.ports))) or "none"
            refuse(client, 403, f"tunnels may reach ports {allowed} only "
                                f"(dfdaemon --tunnel-ports), not {port}")
            return
        tunnel = Tunnel(self, client)
        self._open.add(tunnel)
        self._enter()
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, pipe = await asyncio.get_running_loop().create_connection(
                    lambda: _Pipe(tunnel, client_side=False), host, port)
        except TimeoutError:
            self._failed(tunnel, 504, f"no connection to {where} in {CONNECT_TIMEOUT:g}s")
            return
        except OSError as exc:
            self._failed(tunnel, 502, f"cannot connect to {where}: {exc.strerror or exc}")
            return
        if door.lost or tunnel.closed:
            tunnel.close()
            return
        self.counters["tunnels"] += 1
        client.write(plain_response(200))
        client.set_protocol(_Pipe(tunnel, client_side=True))
        early = door.early()
        if early:                         # the client did not wait for our 200
            self.counters["tunnel_bytes"] += len(early)
            tunnel.upstream.write(early)
        client.resume_reading()
        pipe.release()

    def _failed(self, tunnel: Tunnel, status: int, message: str) -> None:
        self.counters["errors"] += 1
        log.warning("proxy: CONNECT: %s", message)
        refuse(tunnel.client, status, message)
        tunnel.close()                    # the answer is queued; ended() does the books

    def ended(self, tunnel: Tunnel) -> None:
        if tunnel in self._open:
            self._open.discard(tunnel)
            self._leave()

    async def close(self) -> None:
        """Abort every tunnel, every connect under way, every undecided connection."""
        for door in list(self.doors):
            door.transport.abort()
        for task in list(self._connecting):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._connecting, return_exceptions=True)
        for tunnel in list(self._open):
            tunnel.close(abort=True)


def refuse(transport: asyncio.Transport | None, status: int, message: str) -> None:
    """Answer ``status`` and close the connection (after the answer is sent)."""
    if transport is not None and not transport.is_closing():
        transport.write(plain_response(status, message))
        transport.close()
