"""The piece-response receiver, fed like a BufferedProtocol at every split point."""

from __future__ import annotations

import os

import pytest

from engine.download.response import MAX_HEAD, PieceResponse, ProtocolError
from engine.download.sinks import FileSink

BODY = os.urandom(3000)
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 3000\r\nContent-Type: application/octet-stream\r\n\r\n"


def feed(response: PieceResponse, data: bytes) -> int:
    """Deliver ``data`` as a transport would: into get_buffer(), as much as fits.

    Returns how many bytes were consumed (it stops once the response is done).
    """
    used = 0
    while used < len(data) and not response.done:
        buf = response.get_buffer()
        assert len(buf) > 0
        n = min(len(buf), len(data) - used)
        buf[:n] = data[used:used + n]
        buf.release()
        response.received(n)
        used += n
    return used


def test_head_and_body_split_at_every_byte():
    wire = HEAD + BODY
    for split in range(len(wire) + 1):
        target = bytearray(len(BODY))
        response = PieceResponse(target)
        assert feed(response, wire[:split]) == split
        assert feed(response, wire[split:]) == len(wire) - split
        assert response.ok and response.keep_alive and response.body_bytes == len(BODY)
        assert bytes(target) == BODY, split
        response.release()


@pytest.mark.parametrize("bounce", [1000, 4096])
def test_file_sink_split_at_every_byte(tmp_path, bounce):
    """The pwrite sink: a bounce buffer smaller than the body, flushed at its offset."""
    wire = HEAD + BODY
    fd = os.open(tmp_path / "data", os.O_RDWR | os.O_CREAT)
    try:
        for split in range(0, len(wire) + 1, 7):
            os.ftruncate(fd, 0)
            os.ftruncate(fd, 100 + len(BODY) + 100)
            response = PieceResponse(FileSink(fd, 100, len(BODY), bounce))
            feed(response, wire[:split])
            feed(response, wire[split:])
            assert response.ok, split
            response.release()
            assert os.pread(fd, len(BODY) + 200, 0) == bytes(100) + BODY + bytes(100), split
    finally:
        os.close(fd)


def test_one_byte_at_a_time():
    wire = HEAD + BODY
    target = bytearray(len(BODY))
    response = PieceResponse(target)
    for i in range(len(wire)):
        assert feed(response, wire[i:i + 1]) == 1
    assert response.ok and bytes(target) == BODY


def test_body_goes_straight_to_the_target_after_the_head():
    target = bytearray(len(BODY))
    response = PieceResponse(target)
    feed(response, HEAD + BODY[:10])
    buf = response.get_buffer()  # now a view of the target itself at offset 10
    assert len(buf) == len(BODY) - 10
    assert buf.obj is not None and buf.nbytes == len(BODY) - 10
    buf[:5] = b"XXXXX"
    assert target[10:15] == b"XXXXX"


@pytest.mark.parametrize("status,reason", [(404, b"Not Found"), (503, b"Service Unavailable")])
def test_error_bodies_are_drained_and_the_connection_stays_usable(status, reason):
    body = b"piece not here\n"
    wire = (b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nRetry-After: 1\r\n\r\n"
            % (status, reason, len(body)) + body)
    for split in range(len(wire) + 1):
        target = bytearray(100)
        response = PieceResponse(target)
        feed(response, wire[:split])
        feed(response, wire[split:])
        assert response.done and not response.ok and response.status == status
        assert response.keep_alive and target == bytearray(100)
        assert response.headers["retry-after"] == "1"


def test_zero_length_piece():
    response = PieceResponse(bytearray(0))
    feed(response, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert response.ok


def test_connection_close_is_honoured():
    target = bytearray(3)
    response = PieceResponse(target)
    feed(response, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    assert response.ok and not response.keep_alive and target == b"abc"
    response = PieceResponse(bytearray(3))
    feed(response, b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert response.ok and not response.keep_alive


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2999\r\n\r\n",        # wrong size for the piece
    b"HTTP/1.1 200 OK\r\n\r\n",                                # no length
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",  # chunked
    b"SSH-2.0-OpenSSH\r\n\r\n",                                # not HTTP
    b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",           # bad status
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",               # bad header
])
def test_malformed_heads_are_protocol_errors(wire):
    response = PieceResponse(bytearray(3000))
    with pytest.raises(ProtocolError):
        feed(response, wire)


def test_bytes_past_the_response_are_refused():
    response = PieceResponse(bytearray(3))
    with pytest.raises(ProtocolError):
        feed(response, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcEXTRA")
    response = PieceResponse(bytearray(3))
    feed(response, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    with pytest.raises(ProtocolError):
        response.get_buffer()


def test_a_head_that_never_ends_is_refused():
    response = PieceResponse(bytearray(10))
    with pytest.raises(ProtocolError):
        feed(response, b"HTTP/1.1 200 OK\r\n" + b"X-Pad: y\r\n" * (MAX_HEAD // 10 + 1))
