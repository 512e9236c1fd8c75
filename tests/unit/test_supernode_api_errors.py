"""supernode.api.Api without sockets: how a service's failures become answers."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from engine.errors import OriginError, StoreError
from supernode.api import Api


class Failing:
    """A service whose schedule raises ``exc``; everything else is unused."""

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def schedule(self, _msg):
        raise self.exc

    def metrics(self):
        return {"schedules": 3, "versions_cached": 1}


BODY = orjson.dumps({"task_id": "ab" * 32, "peer_id": "p"})


@pytest.mark.parametrize("exc, status, message", [
    (OriginError("origin answered 502"), 503, "origin answered 502"),
    (StoreError("the store is torn"), 503, "the store is torn"),
    (RuntimeError("secret token xyz in a traceback"), 500, "internal error"),
])
def test_service_failures_map_to_5xx_without_leaking_details(exc, status, message):
    answer = asyncio.run(Api(Failing(exc)).handle("POST", "/api/v1/schedule", BODY))
    assert answer[:2] == (status, "application/json")
    assert orjson.loads(answer[2]) == {"error": message}


def test_malformed_json_is_400_and_metrics_are_text():
    api = Api(Failing(RuntimeError()), extra_metrics=lambda: {"pieces_served": 7})
    status, kind, body = asyncio.run(api.handle("POST", "/api/v1/schedule", b"{nope"))
    assert status == 400 and "malformed JSON" in orjson.loads(body)["error"]
    status, kind, body = asyncio.run(api.handle("GET", "/metrics?x=1", b""))
    assert (status, kind) == (200, "text/plain; charset=utf-8")
    assert body.decode().splitlines() == [
        "# TYPE damselfly_supernode_pieces_served counter", "damselfly_supernode_pieces_served 7",
        "# TYPE damselfly_supernode_schedules counter", "damselfly_supernode_schedules 3",
        "# TYPE damselfly_supernode_versions_cached gauge",
        "damselfly_supernode_versions_cached 1"]
