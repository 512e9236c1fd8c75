"""The sans-IO request parser, fed whole and one byte at a time."""

from __future__ import annotations

import pytest

from engine import http1

TWO = (b"GET /pieces/abc/1 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
       b"GET /healthz HTTP/1.0\r\n\r\n")


def _bytewise(data: bytes) -> list[http1.Request]:
    parser, out = http1.RequestParser(), []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
    assert parser.pending == 0
    return out


@pytest.mark.parametrize("feed", [lambda d: http1.RequestParser().feed(d), _bytewise])
def test_pipelined_requests_parse_however_split(feed):
    first, second = feed(TWO)
    assert (first.method, first.target, first.headers["range"]) == ("GET", "/pieces/abc/1", "bytes=0-9")
    assert first.keep_alive and not second.keep_alive


@pytest.mark.parametrize("head", [
    b"GET /x\r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"GET /x HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"G\xffT /x HTTP/1.1\r\n\r\n",
])
def test_malformed_heads_are_protocol_errors(head):
    with pytest.raises(http1.ProtocolError) as info:
        _bytewise(head)
    assert info.value.status == 400


def test_oversized_head_is_refused_before_it_ends():
    parser = http1.RequestParser()
    with pytest.raises(http1.ProtocolError) as info:
        parser.feed(b"GET /x HTTP/1.1\r\nX: " + b"a" * http1.MAX_HEAD)
    assert info.value.status == 431


@pytest.mark.parametrize("value,size,want", [
    (None, 10, None), ("bytes=0-9", 10, (0, 10)), ("bytes=2-", 10, (2, 10)),
    ("bytes=-3", 10, (7, 10)), ("bytes=5-100", 10, (5, 10)),
])
def test_ranges_inside_a_piece(value, size, want):
    assert http1.parse_range(value, size) == want


@pytest.mark.parametrize("value", ["bytes=10-", "bytes=5-2", "bytes=-", "items=0-1", "bytes=0-1,3-4"])
def test_ranges_outside_or_odd_are_416(value):
    with pytest.raises(http1.ProtocolError) as info:
        http1.parse_range(value, 10)
    assert info.value.status == 416


def test_response_head_is_well_formed():
    head = http1.response_head(503, 3, {"Retry-After": "1"}, keep_alive=False)
    assert head == (b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n"
                    b"Retry-After: 1\r\nConnection: close\r\n\r\n")


BODIES = (b"POST /api/v1/schedule HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"want\": 4}"
          b"POST /api/v1/heartbeat HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
          b"GET /healthz HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("split", [len(BODIES), 1, 7])
def test_bodies_are_framed_by_content_length_however_split(split):
    parser, out = http1.RequestParser(max_body=1 << 10), []
    for i in range(0, len(BODIES), split):
        out += parser.feed(BODIES[i:i + split])
    assert [(r.method, r.target, r.body) for r in out] == [
        ("POST", "/api/v1/schedule", b'{"want": 4}'), ("POST", "/api/v1/heartbeat", b""),
        ("GET", "/healthz", b"")]
    assert parser.pending == 0


@pytest.mark.parametrize("head, status", [
    (b"POST /x HTTP/1.1\r\nContent-Length: 1025\r\n\r\n", 413),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
])
def test_body_limits(head, status):
    with pytest.raises(http1.ProtocolError) as info:
        http1.RequestParser(max_body=1 << 10).feed(head)
    assert info.value.status == status


def test_continue_is_due_only_while_an_expected_body_is_missing():
    parser = http1.RequestParser(max_body=1 << 10)
    assert parser.feed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\n"
                       b"Content-Length: 4\r\n\r\n") == []
    assert parser.continue_due
    [request] = parser.feed(b"body")
    assert request.body == b"body" and not parser.continue_due
    # The body came with the head: nobody is waiting for a 100.
    parser.feed(b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz")
    assert not parser.continue_due


def test_begun_covers_a_head_waiting_for_its_body():
    parser = http1.RequestParser(max_body=100)
    assert not parser.begun
    assert parser.feed(b"POST /x HTTP/1.1\r\n") == [] and parser.begun
    assert parser.feed(b"Content-Length: 3\r\n\r\n") == []
    assert parser.pending == 0 and parser.begun      # the head is in, the body is not
    (request,) = parser.feed(b"abc")
    assert request.body == b"abc" and not parser.begun
