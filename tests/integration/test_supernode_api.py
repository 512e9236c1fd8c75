"""The HTTP API refuses bad input with a 4xx and a JSON error, and stays consistent."""

from __future__ import annotations

import aiohttp
import pytest

from supernode.scheduler import invariants
from tests.helpers import run
from tests.integration.origin import Origin
from tests.integration.snharness import MiB, blob, peers, supernode

HEX = "ab" * 32


def _peer(name: str = "p1", port: int = 9000) -> dict:
    return {"peer_id": name, "ip": "127.0.0.1", "port": port}


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("POST", "/api/v1/register", b"{not json", 400, "malformed JSON"),
    ("POST", "/api/v1/register", b"[1, 2]", 400, "JSON object"),
    ("POST", "/api/v1/register", {"url": 5, "peer": _peer()}, 400, "'url' has the wrong type"),
    ("POST", "/api/v1/register", {"url": "http://h/x"}, 400, "missing field 'peer'"),
    ("POST", "/api/v1/register", {"url": "ftp://h/x", "peer": _peer()}, 400, "http(s)"),
    ("POST", "/api/v1/register", {"url": "http://h/x", "peer": _peer("bad id!")}, 400,
     "peer id"),
    ("POST", "/api/v1/register", {"url": "http://h/x", "peer": _peer(port=0)}, 400, "port"),
    ("POST", "/api/v1/register", {"url": "http://h/x", "peer": _peer(), "headers": {"a": 1}},
     400, "strings"),
    ("POST", "/api/v1/register", {"url": "http://h/x", "peer": _peer("cdn")}, 400, "CDN"),
    ("POST", "/api/v1/schedule", {"task_id": "nope", "peer_id": "p1"}, 400, "task id"),
    ("POST", "/api/v1/schedule", {"task_id": HEX, "peer_id": "p1"}, 404, "not known"),
    ("POST", "/api/v1/schedule", {"task_id": HEX, "peer_id": "p1", "want": 1000}, 400,
     "want"),
    ("POST", "/api/v1/schedule", {"task_id": HEX, "peer_id": "p1", "results": {}}, 400,
     "results"),
    ("POST", "/api/v1/heartbeat", {"peer_id": "ghost"}, 404, "not registered"),
    ("POST", "/api/v1/heartbeat", {}, 400, "missing field"),
    ("POST", "/api/v1/leave", {"peer_id": "ghost"}, 404, "not registered"),
    ("POST", "/api/v1/announce", {"peer": _peer(), "task_id": HEX, "sha256": HEX}, 404,
     "not known"),
    ("POST", "/api/v1/announce", {"peer": _peer(), "task_id": HEX, "sha256": "xyz"}, 400,
     "sha256"),
    ("POST", "/api/v1/announce", {"task_id": HEX, "sha256": HEX}, 400, "missing field 'peer'"),
    ("POST", "/api/v1/leave", {"peer_id": "ghost", "task_id": HEX}, 404, "not known"),
    ("GET", "/api/v1/tasks/xyz", None, 400, "task id"),
    ("GET", f"/api/v1/tasks/{HEX}", None, 404, "not known"),
    ("GET", "/api/v1/nothing", None, 404, "Not Found"),
    ("GET", f"/api/v1/tasks/{HEX}/pieces", None, 404, "Not Found"),
    ("POST", f"/api/v1/tasks/{HEX}", {}, 405, "Method Not Allowed"),
    ("GET", "/api/v1/register", None, 405, "Method Not Allowed"),
])
def test_bad_requests(tmp_path, method, path, body, status, needle):
    async def main():
        async with supernode(tmp_path) as node, aiohttp.ClientSession() as s:
            kw = {"data": body} if isinstance(body, bytes) else {"json": body}
            async with s.request(method, node.url + path, **kw) as resp:
                assert resp.status == status
                assert resp.content_type == "application/json"
                assert needle in (await resp.json())["error"]
    run(main())


def test_bad_reports_change_nothing(tmp_path):
    data = blob(2 * MiB)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("f", data)
            async with peers(node, "a", "b", "outsider") as (a, b, outsider):
                done = await a.download(origin.url("f"))
                task = done.view.task_id.hex
                view = await b.register(origin.url("f"))
                bad = [
                    # b was never assigned piece 0 from a... but a holds it: allowed
                    # only as a success; a failure from "ghost" (unknown) is not.
                    ({"piece": 0, "source": "ghost", "ok": False, "reason": "failed"},
                     "never assigned"),
                    ({"piece": 0, "source": "outsider", "ok": True}, "never assigned"),
                    ({"piece": 99, "source": "cdn", "ok": True}, "out of range"),
                    ({"piece": 0, "source": "cdn", "ok": False, "reason": "bored"}, "reason"),
                    ({"piece": -1, "source": "cdn", "ok": True}, "piece"),
                    ({"piece": "0", "source": "cdn", "ok": True}, "wrong type"),
                ]
                for result, needle in bad:
                    # A good result first: a bad batch must not apply even it.
                    batch = [{"piece": 1, "source": "cdn", "ok": True}, result]
                    status, body = await b.post("/api/v1/schedule", {
                        "task_id": task, "peer_id": "b", "results": batch})
                    assert status == 400 and needle in body["error"], (result, body)
                    assert node.service.scheduler.piece_state(view.task_id, b.info.peer_id,
                                                              1) == "missing"
                status, body = await outsider.post("/api/v1/schedule", {
                    "task_id": task, "peer_id": "outsider",
                    "results": [{"piece": 0, "source": "cdn", "ok": True}]})
                assert status == 404 and "not registered" in body["error"]
                invariants.check(node.service.scheduler)
                # The swarm still works for b, with a as a possible source.
                result = await b.resume(view)
                assert result.action == "done" and result.data == data
                status, body = await b.post("/api/v1/heartbeat", {"peer_id": "b"})
                assert (status, body) == (200, {"ok": True})
                status, body = await b.post("/api/v1/leave", {"peer_id": "b", "task_id": task})
                assert (status, body) == (200, {"ok": True})
                invariants.check(node.service.scheduler)
    run(main())


def test_task_info_health_and_metrics(tmp_path):
    data = blob(MiB + 3)

    async def main():
        async with Origin() as origin, supernode(tmp_path) as node:
            origin.add("f", data)
            async with peers(node, "a") as (a,):
                done = await a.download(origin.url("f"))
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{node.url}/api/v1/tasks/{done.view.task_id}") as resp:
                    info = await resp.json()
                assert info["state"] == "complete" and info["length"] == len(data)
                assert info["piece_count"] == 2 and info["sha256"] == done.view.sha256
                async with s.get(f"{node.url}/healthz") as resp:
                    assert resp.status == 200 and await resp.json() == {"ok": True}
                async with s.get(f"{node.url}/metrics") as resp:
                    text = await resp.text()
            metrics = dict(line.split() for line in text.splitlines()
                           if not line.startswith("#"))
            assert metrics["damselfly_supernode_origin_requests"] == "1"
            assert metrics["damselfly_supernode_origin_bytes"] == str(len(data))
            assert metrics["damselfly_supernode_pieces_served"] == "2"
            assert metrics["damselfly_supernode_versions_complete"] == "1"
    run(main())
