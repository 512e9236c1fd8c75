"""DownloadRequest validation and the rendezvous order of supernodes."""

from __future__ import annotations

import collections

import pytest

from engine.download import DownloadRequest, rendezvous_order
from engine.download.supernodes import base_url
from engine.errors import BadInput
from engine.identity import task_id_for
from engine.types import Digest

SHA = "sha256:" + "ab" * 32


def test_a_valid_request_knows_its_task_id():
    request = DownloadRequest("http://origin/f?X-Amz-Signature=s1", {"Authorization": "Bearer x"},
                              Digest.parse(SHA), tag="t", filter_params=("token",))
    assert request.task_id == task_id_for("http://origin/f?X-Amz-Signature=s1", tag="t",
                                          digest=Digest.parse(SHA), filter_params=("token",))
    # Differently signed URLs of one object are one task.
    assert request.task_id == DownloadRequest(
        "http://origin/f?X-Amz-Signature=s2", digest=Digest.parse(SHA), tag="t").task_id


def test_headers_never_show_in_repr():
    request = DownloadRequest("http://origin/f", {"Authorization": "Bearer secret-token"})
    assert "secret-token" not in repr(request) and "secret-token" not in str(request)


def test_of_parses_loose_inputs():
    request = DownloadRequest.of("https://o/f", digest=SHA, filter_params=["a"], timeout=5)
    assert request.digest == Digest.parse(SHA) and request.filter_params == ("a",)


@pytest.mark.parametrize("kwargs", [
    {"url": "ftp://origin/f"},
    {"url": "http:///nohost"},
    {"url": "not a url"},
    {"url": 42},
    {"url": "http://o/f", "headers": {"X": 1}},
    {"url": "http://o/f", "headers": {"X-Bad": "a\r\nInjected: yes"}},
    {"url": "http://o/f", "headers": {"Bad Name": "v"}},
    {"url": "http://o/f", "headers": [("a", "b")]},
    {"url": "http://o/f", "digest": SHA},  # text, not a Digest
    {"url": "http://o/f", "filter_params": ["a"]},  # list, not tuple
    {"url": "http://o/f", "filter_params": ("",)},
    {"url": "http://o/f", "back_source": "yes"},
    {"url": "http://o/f", "timeout": 0},
    {"url": "http://o/f", "timeout": -1.0},
    {"url": "http://o/f", "timeout": float("inf")},
    {"url": "http://o/f", "timeout": True},
    {"url": "http://o/f", "tag": None},
])
def test_invalid_requests_are_bad_input(kwargs):
    with pytest.raises(BadInput):
        DownloadRequest(**kwargs)


def test_bad_digest_text_is_bad_input():
    with pytest.raises(BadInput):
        DownloadRequest.of("http://o/f", digest="sha256:xyz")


NODES = [f"10.0.0.{i}:8002" for i in range(1, 6)]


def test_rendezvous_is_a_deterministic_permutation():
    for key in ("a", "b", "c" * 64):
        order = rendezvous_order(key, NODES)
        assert sorted(order) == sorted(NODES)
        assert order == rendezvous_order(key, list(reversed(NODES)))
    assert rendezvous_order("k", NODES + NODES[:2]) == rendezvous_order("k", NODES)
    assert rendezvous_order("k", []) == []


def test_rendezvous_spreads_keys_over_nodes():
    firsts = collections.Counter(rendezvous_order(f"task-{i}", NODES)[0] for i in range(2000))
    assert set(firsts) == set(NODES)
    assert min(firsts.values()) > 2000 / len(NODES) * 0.7


def test_removing_a_node_moves_only_its_keys():
    for i in range(500):
        key = f"task-{i}"
        full = rendezvous_order(key, NODES)
        without = rendezvous_order(key, [n for n in NODES if n != NODES[2]])
        # Everyone else keeps their relative order: failover goes to the next one.
        assert without == [n for n in full if n != NODES[2]]


def test_base_url():
    assert base_url("10.0.0.1:8002") == "http://10.0.0.1:8002"
    assert base_url("https://sn.example/") == "https://sn.example"
    with pytest.raises(BadInput):
        base_url("  ")
