"""The supernode's HTTP API: aiohttp routes that speak engine.messages in orjson.

A thin adapter: each handler decodes the body, builds the message (which
validates itself), calls the service and encodes the answer. Errors map in
one place (``_errors``): malformed JSON and invalid fields are 400, unknown
tasks and peers 404, and both carry ``{"error": "..."}``; anything else is a
500 with a generic message (the details go to the log, never a secret).

    POST /api/v1/register    RegisterRequest   -> TaskView
    POST /api/v1/schedule    ScheduleRequest   -> ScheduleResponse
    POST /api/v1/heartbeat   Heartbeat         -> {"ok": true}
    POST /api/v1/leave       Leave             -> {"ok": true}
    GET  /api/v1/tasks/<id>                    -> TaskView
    GET  /healthz                              -> {"ok": true}
    GET  /metrics                              -> Prometheus text format
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from engine.errors import BadInput, DamselflyError, TaskNotFound
from engine.messages import Heartbeat, Leave, RegisterRequest, ScheduleRequest
from engine.types import TaskId
from supernode.scheduler import UnknownPeer, UnknownTask
from supernode.service import SupernodeService

log = logging.getLogger(__name__)
SERVICE = web.AppKey("service", SupernodeService)
EXTRA_METRICS = web.AppKey("extra_metrics", Callable[[], dict[str, int]])
_OK = b'{"ok":true}'


def make_app(service: SupernodeService,
             extra_metrics: Callable[[], dict[str, int]] = dict) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=1 << 20)
    app[SERVICE] = service
    app[EXTRA_METRICS] = extra_metrics
    app.router.add_post("/api/v1/register", register)
    app.router.add_post("/api/v1/schedule", schedule)
    app.router.add_post("/api/v1/heartbeat", heartbeat)
    app.router.add_post("/api/v1/leave", leave)
    app.router.add_get("/api/v1/tasks/{task_id}", task_info)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=obj if isinstance(obj, bytes) else orjson.dumps(obj),
                        status=status, content_type="application/json")


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc}") from exc


@web.middleware
async def _errors(request: web.Request,
                  handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
    try:
        return await handler(request)
    except (UnknownTask, UnknownPeer, TaskNotFound) as exc:
        return _json({"error": str(exc)}, 404)
    except BadInput as exc:
        return _json({"error": str(exc)}, 400)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _json({"error": exc.reason}, exc.status)
        raise
    except DamselflyError as exc:
        log.warning("%s %s failed: %s", request.method, request.path, exc)
        return _json({"error": str(exc)}, 503)
    except Exception:
        log.exception("%s %s crashed", request.method, request.path)
        return _json({"error": "internal error"}, 500)


async def register(request: web.Request) -> web.Response:
    msg = RegisterRequest.from_wire(await _body(request))
    view = await request.app[SERVICE].register(msg)
    return _json(view.to_wire())


async def schedule(request: web.Request) -> web.Response:
    msg = ScheduleRequest.from_wire(await _body(request))
    return _json(request.app[SERVICE].schedule(msg).to_wire())


async def heartbeat(request: web.Request) -> web.Response:
    request.app[SERVICE].heartbeat(Heartbeat.from_wire(await _body(request)))
    return _json(_OK)


async def leave(request: web.Request) -> web.Response:
    request.app[SERVICE].leave(Leave.from_wire(await _body(request)))
    return _json(_OK)


async def task_info(request: web.Request) -> web.Response:
    task_id = TaskId(request.match_info["task_id"])
    return _json(request.app[SERVICE].task_view(task_id).to_wire())


async def healthz(request: web.Request) -> web.Response:
    return _json(_OK)


async def metrics(request: web.Request) -> web.Response:
    values = dict(request.app[SERVICE].metrics())
    values.update(request.app[EXTRA_METRICS]())
    lines = []
    for name, value in sorted(values.items()):
        full = f"damselfly_supernode_{name}"
        lines.append(f"# TYPE {full} {'gauge' if _is_gauge(name) else 'counter'}")
        lines.append(f"{full} {value}")
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def _is_gauge(name: str) -> bool:
    return name.startswith(("versions_", "scheduler_"))
