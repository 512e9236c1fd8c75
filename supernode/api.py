"""The supernode's HTTP API: routes that speak engine.messages in orjson.

A thin adapter with no I/O: ``Api.handle(method, target, body)`` decodes the
body, builds the message (which validates itself), calls the service and
encodes the answer as ``(status, content type, body)``; ``supernode.apiserver``
carries it over the wire. Errors map in one place (``_error``): malformed
JSON and invalid fields are 400, unknown tasks and peers 404, and both carry
``{"error": "..."}``; a DamselflyError of the service is 503; anything else
is a 500 with a generic message (the details go to the log, never a secret).

    POST /api/v1/register    RegisterRequest   -> TaskView
    POST /api/v1/schedule    ScheduleRequest   -> ScheduleResponse
    POST /api/v1/heartbeat   Heartbeat         -> {"ok": true}
    POST /api/v1/leave       Leave             -> {"ok": true}
    POST /api/v1/announce    Announce          -> TaskView
    GET  /api/v1/tasks/<id>                    -> TaskView
    GET  /healthz                              -> {"ok": true}
    GET  /metrics                              -> Prometheus text format
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import orjson

from engine.errors import BadInput, DamselflyError, TaskNotFound
from engine.messages import Announce, Heartbeat, Leave, RegisterRequest, ScheduleRequest
from engine.types import TaskId
from supernode.scheduler import UnknownPeer, UnknownTask
from supernode.service import SupernodeService

log = logging.getLogger(__name__)
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
_OK = b'{"ok":true}'
_TASKS = "/api/v1/tasks/"

Answer = tuple[int, str, bytes]


class Api:
    """The routes, bound to one service. One event loop owns it."""

    def __init__(self, service: SupernodeService,
                 extra_metrics: Callable[[], dict[str, int]] = dict) -> None:
        self.service = service
        self.extra_metrics = extra_metrics
        self._posts = {"/api/v1/register": self._register, "/api/v1/schedule": self._schedule,
                       "/api/v1/heartbeat": self._heartbeat, "/api/v1/leave": self._leave,
                       "/api/v1/announce": self._announce}
        self._gets = {"/healthz": self._healthz, "/metrics": self._metrics}

    async def handle(self, method: str, target: str, body: bytes) -> Answer:
        """Answer one request; never raises (errors become 4xx/5xx answers)."""
        path = unquote(target.split("?", 1)[0])
        task = path[len(_TASKS):] if path.startswith(_TASKS) else ""
        try:
            if method == "POST" and path in self._posts:
                return await self._posts[path](_decode(body))
            if method in ("GET", "HEAD"):
                if path in self._gets:
                    return self._gets[path]()
                if task and "/" not in task:
                    return _json(self.service.task_view(TaskId(task)).to_wire())
            if path in self._posts or path in self._gets or (task and "/" not in task):
                return _json({"error": "Method Not Allowed"}, 405)
            return _json({"error": "Not Found"}, 404)
        except Exception as exc:  # noqa: BLE001 -- every error becomes an answer
            return _error(method, path, exc)

    async def _register(self, data: Any) -> Answer:
        view = await self.service.register(RegisterRequest.from_wire(data))
        return _json(view.to_wire())

    async def _schedule(self, data: Any) -> Answer:
        return _json(self.service.schedule(ScheduleRequest.from_wire(data)).to_wire())

    async def _heartbeat(self, data: Any) -> Answer:
        self.service.heartbeat(Heartbeat.from_wire(data))
        return _json(_OK)

    async def _announce(self, data: Any) -> Answer:
        return _json(self.service.announce(Announce.from_wire(data)).to_wire())

    async def _leave(self, data: Any) -> Answer:
        self.service.leave(Leave.from_wire(data))
        return _json(_OK)

    def _healthz(self) -> Answer:
        return _json(_OK)

    def _metrics(self) -> Answer:
        values = dict(self.service.metrics())
        values.update(self.extra_metrics())
        lines = []
        for name, value in sorted(values.items()):
            full = f"damselfly_supernode_{name}"
            lines.append(f"# TYPE {full} {'gauge' if _is_gauge(name) else 'counter'}")
            lines.append(f"{full} {value}")
        return 200, TEXT, ("\n".join(lines) + "\n").encode()


def _decode(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc}") from exc


def _json(obj: Any, status: int = 200) -> Answer:
    return status, JSON, obj if isinstance(obj, bytes) else orjson.dumps(obj)


def _error(method: str, path: str, exc: Exception) -> Answer:
    if isinstance(exc, (UnknownTask, UnknownPeer, TaskNotFound)):
        return _json({"error": str(exc)}, 404)
    if isinstance(exc, BadInput):
        return _json({"error": str(exc)}, 400)
    if isinstance(exc, DamselflyError):
        log.warning("%s %s failed: %s", method, path, exc)
        return _json({"error": str(exc)}, 503)
    log.error("%s %s crashed", method, path, exc_info=exc)
    return _json({"error": "internal error"}, 500)


def _is_gauge(name: str) -> bool:
    return name.startswith(("versions_", "scheduler_"))
