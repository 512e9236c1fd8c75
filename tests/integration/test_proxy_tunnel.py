"""CONNECT tunnels of the proxy (engine.proxy.tunnel): bytes carried whole both
ways, half-closes passed on, clear refusals, and nothing left open.

Most tests run the Proxy in-process on the strict loop runner (tests.helpers.run:
any error the loop logs fails the test); the last one sends curl's https
requests through a real dfdaemon's --proxy to a TLS server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from perf.lab.tools import ensure
from tests.helpers import run
from tests.integration.swarm import Daemon, scratch_dir

pytestmark = pytest.mark.integration
MIB = 1 << 20


@contextlib.asynccontextmanager
async def proxy(tmp: str, ports):
    from engine.proxy.server import Proxy

    p = Proxy(host="127.0.0.1", port=0, socket_path=os.path.join(tmp, "none.sock"),
              data_dir=tmp, tunnel_ports=frozenset(ports))
    await p.start()
    try:
        yield p
    finally:
        await p.close()


@contextlib.asynccontextmanager
async def upstream(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def open_tunnel(p, port: int, early: bytes = b""):
    """A client connection through ``p`` to 127.0.0.1:port; (reader, writer, head)."""
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            + early)
    head = await r.readuntil(b"\r\n\r\n")
    return r, w, head


async def refused(p, line: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", p.port)
    w.write(line)
    answer = await r.read()              # the proxy closes after its answer
    w.close()
    return answer


async def ended(reader: asyncio.StreamReader) -> bool:
    """True once the connection ends (closed or aborted) with no byte to read."""
    try:
        return await asyncio.wait_for(reader.read(), 10) == b""
    except ConnectionResetError:
        return True


def test_bytes_cross_whole_both_ways_and_half_closes_pass_on(tmp_path):
    """8 MiB up, then the client's EOF, then 8 MiB down: the server hashes what it
    got and the client checks what came back. Flow control must hold both ways
    (the client does not read until it has sent everything)."""
    up_data, down_data = os.urandom(8 * MIB + 5), os.urandom(8 * MIB + 7)
    got = {}

    async def server(r, w):
        got["up"] = hashlib.sha256(await r.read()).hexdigest()   # until the client's EOF
        w.write(down_data)
        await w.drain()
        w.close()

    async def main():
        async with upstream(server) as port, proxy(str(tmp_path), {port}) as p:
            r, w, head = await open_tunnel(p, port)
            assert head.startswith(b"HTTP/1.1 200 "), head
            w.write(up_data)
            await w.drain()
            w.write_eof()
            down = await r.read()
            w.close()
            assert got["up"] == hashlib.sha256(up_data).hexdigest()
            assert hashlib.sha256(down).hexdigest() == hashlib.sha256(down_data).hexdigest()
            assert p.counters["tunnels"] == 1
            assert p.counters["tunnel_bytes"] == len(up_data) + len(down_data)
            await asyncio.sleep(0.05)
            assert p.active == 0, "a finished tunnel still counts as busy"

    run(main())


def test_a_reader_that_stalls_stalls_the_writer_not_the_proxy(tmp_path):
    """Flow control: while the server reads nothing, the proxy stops reading
    the client once its buffers are full, so the client's writes stall instead
    of piling up in the proxy's memory; then everything arrives."""
    size = 64 * MIB                        # far beyond the kernel's socket buffers
    release, got = asyncio.Event(), {}

    async def server(r, w):
        await release.wait()
        got["up"] = hashlib.sha256(await r.read()).hexdigest()
        w.close()

    async def main():
        data = os.urandom(size)
        async with upstream(server) as port, proxy(str(tmp_path), {port}) as p:
            r, w, _ = await open_tunnel(p, port)
            w.write(data)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(w.drain(), 1.0)
            assert p.counters["tunnel_bytes"] < size // 2, p.counters
            release.set()
            await w.drain()
            w.write_eof()
            assert await r.read() == b""
            w.close()
            assert got["up"] == hashlib.sha256(data).hexdigest()

    run(main())


def test_early_bytes_and_a_server_that_speaks_first_keep_their_order(tmp_path):
    """A client that sends right after its CONNECT head, and a server (another
    thread, so its banner races our 200) that speaks as soon as it accepts:
    the 200 comes first and nothing is lost, 50 tunnels in a row."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        for _ in range(50):
            conn, _ = listener.accept()
            with conn:
                conn.sendall(b"BANNER\n")
                line = conn.makefile("rb").readline()
                conn.sendall(b"echo " + line)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main():
        async with proxy(str(tmp_path), {port}) as p:
            for i in range(50):
                r, w, head = await open_tunnel(p, port, early=b"hello %d\n" % i)
                assert head == b"HTTP/1.1 200 Connection established\r\n\r\n", (i, head)
                assert await r.read() == b"BANNER\necho hello %d\n" % i
                w.close()

    try:
        run(main())
    finally:
        listener.close()
        thread.join(10)


def test_refusals_are_answered_and_close(tmp_path):
    async def main():
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))            # bound, never listening: refused
        dead = silent.getsockname()[1]
        try:
            async with proxy(str(tmp_path), {dead}) as p:
                answer = await refused(p, b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 403 "), answer
                assert f"ports {dead} only".encode() in answer
                answer = await refused(p, f"CONNECT 127.0.0.1:{dead} HTTP/1.1\r\n\r\n".encode())
                assert answer.startswith(b"HTTP/1.1 502 "), answer
                answer = await refused(p, b"CONNECT nowhere HTTP/1.1\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 400 ") and b"host:port" in answer
                answer = await refused(p, b"CONNECT " + b"a" * (20 << 10))
                assert answer.startswith(b"HTTP/1.1 431 "), answer[:80]
                # A CONNECT after another request on a keep-alive connection.
                answer = await refused(p, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
                                          b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: x\r\n\r\n")
                assert answer.startswith(b"HTTP/1.1 400 ") and b"HTTP/1.1 405 " in answer
                assert p.counters["tunnels"] == 0 and p.counters["tunnels_refused"] == 1
                assert p.counters["errors"] == 1 and p.active == 0
        finally:
            silent.close()

    run(main())


def test_a_client_that_vanishes_ends_the_upstream_side_and_close_ends_the_rest(tmp_path):
    state = {}

    async def server(r, w):
        await r.read()                     # EOF or reset when the client side goes
        state["ended"] = state.get("ended", 0) + 1
        state["event"].set()
        w.close()

    async def main():
        state["event"] = asyncio.Event()
        async with upstream(server) as port, proxy(str(tmp_path), {port}) as p:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", p.port))
            await loop.sock_sendall(sock, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode())
            assert (await loop.sock_recv(sock, 4096)).startswith(b"HTTP/1.1 200 ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()                   # linger 0: a reset, not a half-close
            await asyncio.wait_for(state["event"].wait(), 10)
            assert p.active == 0
            state["event"].clear()
            # An open tunnel and a connection that has sent nothing yet, when
            # the proxy closes: all of them end.
            r2, w2, _ = await open_tunnel(p, port)
            r3, w3 = await asyncio.open_connection("127.0.0.1", p.port)
            w3.write(b"CONN")
        assert await ended(r2) and await ended(r3)
        w3.close()
        await asyncio.wait_for(state["event"].wait(), 10)
        assert state["ended"] == 2
        w2.close()

    run(main())


def _tls_files(root: str) -> tuple[str, str]:
    cert, key = os.path.join(root, "cert.pem"), os.path.join(root, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", key, "-out", cert], check=True, capture_output=True, timeout=60)
    return cert, key


def test_curl_fetches_https_through_a_dfdaemon(tmp_path):
    """A real https client (curl, CONNECT then TLS) through a real dfdaemon's
    proxy to a TLS server: the file arrives whole and the tunnel is counted."""
    ensure(["curl", "openssl"])   # installs what is missing; never skips
    site = tmp_path / "site"
    site.mkdir()
    data = os.urandom(5 * MIB + 3)
    (site / "layer.bin").write_bytes(data)
    cert, key = _tls_files(str(tmp_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(site), **kwargs)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with scratch_dir("dft-") as root:
            daemon = Daemon(os.path.join(root, "h"), [], "--workers", "1",
                            "--proxy", "127.0.0.1:0", "--tunnel-ports", f"{port},443")
            try:
                out = os.path.join(root, "got.bin")
                r = subprocess.run(
                    [shutil.which("curl"), "-sS", "--fail", "--proxy",
                     f"http://{daemon.ready['proxy']}", "--cacert", cert, "-o", out,
                     f"https://127.0.0.1:{port}/layer.bin"],
                    capture_output=True, text=True, timeout=60, env={**os.environ, "NO_PROXY": ""})
                assert r.returncode == 0, r.stderr
                with open(out, "rb") as f:
                    assert hashlib.sha256(f.read()).hexdigest() == hashlib.sha256(data).hexdigest()
                stats = daemon.stats()["proxy"]
                assert stats["tunnels"] == 1 and stats["tunnel_bytes"] > len(data), stats
            finally:
                daemon.close()
    finally:
        httpd.shutdown()
        httpd.server_close()
