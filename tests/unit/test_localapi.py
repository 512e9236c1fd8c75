"""The local API framing and messages, sans-IO: bytes in, messages out."""

from __future__ import annotations

import pytest

from engine import localapi
from engine.errors import (BadInput, BrokenByPeer, DamselflyError, IntegrityError,
                           NotEnoughSpace, OriginError)
from engine.localapi import DownloadCommand, LineDecoder, encode, parse_command


def _feed_bytewise(decoder: LineDecoder, data: bytes) -> list[dict]:
    out = []
    for i in range(len(data)):
        out.extend(decoder.feed(data[i:i + 1]))
    return out


def test_messages_survive_any_split():
    msgs = [{"event": "progress", "done_bytes": n, "path": "/tmp/ü/☃"} for n in range(5)]
    wire = b"".join(encode(m) for m in msgs)
    assert _feed_bytewise(LineDecoder(), wire) == msgs
    decoder = LineDecoder()
    assert decoder.feed(wire) == msgs
    for cut in range(len(wire)):
        d = LineDecoder()
        assert d.feed(wire[:cut]) + d.feed(wire[cut:]) == msgs


def test_blank_lines_are_ignored_and_a_half_line_at_eof_is_broken():
    d = LineDecoder()
    assert d.feed(b"\n\r\n  \n") == []
    d.feed(b'{"op": "st')
    with pytest.raises(BrokenByPeer):
        d.close()
    LineDecoder().close()  # a clean end


@pytest.mark.parametrize("line", [b"[1, 2]\n", b"not json\n", b'"x"\n', b"{\n"])
def test_bad_lines_are_bad_input(line):
    with pytest.raises(BadInput):
        _feed_bytewise(LineDecoder(), line)


def test_an_endless_line_is_refused_before_it_fills_memory():
    d = LineDecoder(max_line=100)
    with pytest.raises(BadInput):
        _feed_bytewise(d, b"x" * 101)


def test_download_command_round_trips():
    cmd = DownloadCommand("http://o/f?a=1", "/abs/out ü", {"Authorization": "Bearer x, y"},
                          None, "t", ("sig", "exp"), 1024, False, 2.5, True, False)
    wire = _feed_bytewise(LineDecoder(), encode(cmd.to_wire()))
    assert parse_command(wire[0]) == cmd
    assert parse_command({"op": "stats"}) == "stats"


@pytest.mark.parametrize("bad", [
    {"op": "download", "url": "ftp://x/y", "output": "/o"},
    {"op": "download", "url": "http://x/y", "output": "relative/o"},
    {"op": "download", "url": "http://x/y"},
    {"op": "download", "url": "http://x/y", "output": "/o", "headers": {"A": 1}},
    {"op": "download", "url": "http://x/y", "output": "/o", "headers": {"A\r\nB": "v"}},
    {"op": "download", "url": "http://x/y", "output": "/o", "limit": True},
    {"op": "download", "url": "http://x/y", "output": "/o", "limit": 0},
    {"op": "download", "url": "http://x/y", "output": "/o", "timeout": -1},
    {"op": "download", "url": "http://x/y", "output": "/o", "digest": "crc:1"},
    {"op": "download", "url": "http://x/y", "output": "/o", "filter": "a,b"},
    {"op": "download", "url": "http://x/y", "output": "/o", "back_source": "yes"},
    {"op": "launch"},
])
def test_invalid_commands_are_bad_input(bad):
    with pytest.raises(BadInput):
        parse_command(bad)


@pytest.mark.parametrize("exc", [
    BadInput("nope"), IntegrityError("sha256 mismatch"), OriginError("404 from origin", 404),
    NotEnoughSpace("/d", 10, 5),
])
def test_errors_travel_with_their_class_and_exit_code(exc):
    event = _feed_bytewise(LineDecoder(), encode(localapi.error_event(exc)))[0]
    back = localapi.error_from_event(event)
    assert type(back) is type(exc)
    assert (str(back), back.exit_code) == (str(exc), exc.exit_code)


def test_foreign_errors_become_internal_errors_with_exit_1():
    event = localapi.error_event(RuntimeError("boom"))
    back = localapi.error_from_event(event)
    assert type(back) is DamselflyError and back.exit_code == 1 and "boom" in str(back)
    # A kind naming something outside engine.errors is never looked up elsewhere.
    back = localapi.error_from_event({"kind": "os", "message": "m", "exit_code": 6})
    assert type(back) is DamselflyError and back.exit_code == 6
