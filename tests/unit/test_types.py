"""Domain values, piece math and wire messages validate when built."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from engine import messages
from engine.errors import BadInput
from engine.pieces import MAX_PIECE_SIZE, MIN_PIECE_SIZE, PieceLayout, choose_piece_size
from engine.types import Digest, PeerId, TaskId


@given(st.integers(min_value=0, max_value=1 << 46))
def test_layout_covers_every_byte_exactly_once(length):
    layout = PieceLayout.for_length(length)
    assert MIN_PIECE_SIZE <= layout.piece_size <= MAX_PIECE_SIZE
    assert layout.piece_size & (layout.piece_size - 1) == 0
    if length == 0:
        assert layout.count == 0
        return
    first, last = layout.range(0), layout.range(layout.count - 1)
    assert first.start == 0 and last.end == length
    assert 0 < last.length <= layout.piece_size
    assert layout.piece_at(length - 1) == layout.count - 1


@pytest.mark.parametrize("length,size", [
    (0, 1 << 20), (100 << 20, 1 << 20), (512 << 20, 1 << 20), ((512 << 20) + 1, 2 << 20),
    (2 << 30, 4 << 20), (1 << 40, 64 << 20),
])
def test_piece_size_policy(length, size):
    assert choose_piece_size(length) == size


def test_piece_index_out_of_range():
    with pytest.raises(BadInput):
        PieceLayout(10, 4096).range(1)
    with pytest.raises(BadInput):
        PieceLayout(10, 1000)


def test_ids_and_digests_validate():
    with pytest.raises(BadInput):
        TaskId("../../etc")
    with pytest.raises(BadInput):
        PeerId("has space")
    assert TaskId.of("a", "bc") != TaskId.of("ab", "c")  # parts are length-prefixed
    d = Digest.parse("SHA256:" + "AB" * 32)
    assert str(d) == "sha256:" + "ab" * 32
    for bad in ["sha256:xyz", "sha1:" + "a" * 40, "nocolon", "md5:" + "a" * 31]:
        with pytest.raises(BadInput):
            Digest.parse(bad)


def test_schedule_request_roundtrip_and_rejections():
    req = messages.ScheduleRequest(
        TaskId.of("t"), PeerId("p1"),
        (messages.PieceResult(3, PeerId("cdn"), True, 100, 2),
         messages.PieceResult(4, PeerId("p2"), False, reason="corrupt")), want=4)
    assert messages.ScheduleRequest.from_wire(req.to_wire()) == req
    wire = req.to_wire()
    for field, value in [("want", "4"), ("want", True), ("want", 1000), ("task_id", 5),
                         ("results", [{"piece": -1, "source": "x", "ok": True}]),
                         ("results", [{"piece": 1, "source": "x", "ok": False, "reason": "?"}])]:
        with pytest.raises(BadInput):
            messages.ScheduleRequest.from_wire({**wire, field: value})
    with pytest.raises(BadInput):
        messages.ScheduleRequest.from_wire([1, 2])


def test_register_request_refuses_non_http_and_bad_headers():
    peer = {"peer_id": "p", "ip": "127.0.0.1", "port": 1}
    with pytest.raises(BadInput):
        messages.RegisterRequest.from_wire({"url": "file:///etc/passwd", "peer": peer})
    with pytest.raises(BadInput):
        messages.RegisterRequest.from_wire({"url": "http://x/", "peer": peer, "headers": {"a": 1}})
    with pytest.raises(BadInput):
        messages.RegisterRequest.from_wire({"url": "http://x/", "peer": {**peer, "port": 0}})
