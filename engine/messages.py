"""Wire messages between peers and the supernode (HTTP/1.1 + JSON).

Every message is a frozen, slotted dataclass that validates its fields when
built, so a handler never sees a half-valid request. ``from_wire`` takes the
decoded JSON object (a dict) and raises ``BadInput`` naming the bad field;
``to_wire`` returns a dict ready for ``orjson.dumps``.

Endpoints (all POST with a JSON body unless noted)::

    POST /api/v1/register    RegisterRequest   -> TaskView
    POST /api/v1/schedule    ScheduleRequest   -> ScheduleResponse
    POST /api/v1/heartbeat   Heartbeat         -> {"ok": true}
    POST /api/v1/leave       Leave             -> {"ok": true}
    POST /api/v1/announce    Announce          -> TaskView
    GET  /api/v1/tasks/<id>                    -> TaskView
    GET  /healthz                              -> {"ok": true}
    GET  /metrics                              -> Prometheus text (supernode counters)

Errors are 4xx with ``{"error": "..."}``: 400 for malformed JSON or a bad
field, 404 for an unknown task or peer (a peer that gets 404 registers again).

Peer to peer: ``GET /pieces/<task id>/<n>`` answers 200 with exactly the
piece, 404 when the piece is not here, 503 + Retry-After when upload slots
are full. Headers in a RegisterRequest go to the origin only; the supernode
never logs them, stores them or passes them to another peer.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from engine.errors import BadInput
from engine.types import Digest, PeerId, TaskId

ACTIONS = ("assign", "wait", "done", "back_to_source", "fail")
FAILURE_REASONS = ("failed", "corrupt", "timeout", "refused")


def _req(obj: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise BadInput(f"missing field {name!r}")
    return _opt(obj, name, kind)


def _opt(obj: dict, name: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
    value = obj.get(name, default)
    if value is default:
        return value
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise BadInput(f"field {name!r} has the wrong type ({type(value).__name__})")
    return value


def _obj(data: Any) -> dict:
    if not isinstance(data, dict):
        raise BadInput("request body must be a JSON object")
    return data


def _nonneg(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise BadInput(f"field {name!r} must be >= 0")


def _str_dict(name: str, value: dict) -> dict[str, str]:
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise BadInput(f"field {name!r} must map strings to strings")
    return value


def _plain(message: Any) -> dict:
    out = {}
    for f in fields(message):
        value = getattr(message, f.name)
        if isinstance(value, (TaskId, PeerId, Digest)):
            value = str(value)
        elif isinstance(value, tuple):
            value = [_plain(v) if hasattr(v, "__dataclass_fields__") else v for v in value]
        out[f.name] = value
    return out


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Where a peer's upload server listens; ``location`` groups nearby hosts."""

    peer_id: PeerId
    ip: str
    port: int
    location: str = ""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise BadInput(f"port {self.port} out of range")

    @classmethod
    def from_wire(cls, data: Any) -> PeerInfo:
        o = _obj(data)
        return cls(PeerId(_req(o, "peer_id", str)), _req(o, "ip", str),
                   _req(o, "port", int), _opt(o, "location", str, ""))


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    """A peer wants ``url``; the supernode answers with the task it maps to."""

    url: str
    peer: PeerInfo
    headers: dict[str, str] = field(default_factory=dict)
    tag: str = ""
    digest: Digest | None = None
    filter_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise BadInput(f"url must be http(s), got {self.url[:80]!r}")

    @classmethod
    def from_wire(cls, data: Any) -> RegisterRequest:
        o = _obj(data)
        digest = _opt(o, "digest", str)
        filt = _opt(o, "filter_params", list, [])
        if not all(isinstance(p, str) for p in filt):
            raise BadInput("field 'filter_params' must be a list of strings")
        return cls(_req(o, "url", str), PeerInfo.from_wire(_req(o, "peer", dict)),
                   _str_dict("headers", _opt(o, "headers", dict, {})),
                   _opt(o, "tag", str, ""), Digest.parse(digest) if digest else None,
                   tuple(filt))

    def to_wire(self) -> dict:
        return {"url": self.url, "peer": _plain(self.peer), "headers": self.headers,
                "tag": self.tag, "digest": str(self.digest) if self.digest else None,
                "filter_params": list(self.filter_params)}


@dataclass(frozen=True, slots=True)
class TaskView:
    """What a peer needs to know about a task; fields fill in as the CDN learns.

    ``state`` is one of pending, running, complete, failed. ``length`` and
    ``piece_size`` are None until the origin has told the length. On failure
    ``error_kind`` names the class from engine.errors (``OriginError``,
    ``IntegrityError``, ...) so a peer raises the same kind the CDN hit.
    """

    task_id: TaskId
    state: str
    length: int | None = None
    piece_size: int | None = None
    piece_count: int | None = None
    sha256: str | None = None
    error: str | None = None
    error_status: int | None = None
    error_kind: str | None = None

    @classmethod
    def from_wire(cls, data: Any) -> TaskView:
        o = _obj(data)
        return cls(TaskId(_req(o, "task_id", str)), _req(o, "state", str),
                   _opt(o, "length", int), _opt(o, "piece_size", int),
                   _opt(o, "piece_count", int), _opt(o, "sha256", str),
                   _opt(o, "error", str), _opt(o, "error_status", int),
                   _opt(o, "error_kind", str))

    def to_wire(self) -> dict:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class PieceResult:
    """One finished attempt since the last schedule call.

    ``source`` is the peer the piece was assigned from. A peer that got the
    piece some other way (back to source) reports itself as ``source``; the
    supernode accepts that only for a piece whose sha256 it has published,
    and refuses (400) a source it neither assigned nor knows to hold it.
    """

    piece: int
    source: PeerId
    ok: bool
    nbytes: int = 0
    millis: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        _nonneg("piece", self.piece)
        if not self.ok and self.reason not in FAILURE_REASONS:
            raise BadInput(f"failure reason must be one of {FAILURE_REASONS}")

    @classmethod
    def from_wire(cls, data: Any) -> PieceResult:
        o = _obj(data)
        return cls(_req(o, "piece", int), PeerId(_req(o, "source", str)), _req(o, "ok", bool),
                   _opt(o, "nbytes", int, 0), _opt(o, "millis", int, 0),
                   _opt(o, "reason", str, ""))


@dataclass(frozen=True, slots=True)
class ScheduleRequest:
    """Results since the last call, plus a request for up to ``want`` pieces."""

    task_id: TaskId
    peer_id: PeerId
    results: tuple[PieceResult, ...] = ()
    want: int = 4

    def __post_init__(self) -> None:
        if not 0 <= self.want <= 64:
            raise BadInput("field 'want' must be within 0..64")

    @classmethod
    def from_wire(cls, data: Any) -> ScheduleRequest:
        o = _obj(data)
        return cls(TaskId(_req(o, "task_id", str)), PeerId(_req(o, "peer_id", str)),
                   tuple(PieceResult.from_wire(r) for r in _opt(o, "results", list, [])),
                   _opt(o, "want", int, 4))

    def to_wire(self) -> dict:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class Assignment:
    """Fetch ``piece`` from ``source`` at ``addr`` (host:port) and check ``sha256``.

    ``is_cdn`` says the source is the supernode's CDN rather than another
    peer, so a peer can tell how much of a file the swarm carried.
    """

    piece: int
    source: PeerId
    addr: str
    size: int
    sha256: str
    is_cdn: bool = False

    @classmethod
    def from_wire(cls, data: Any) -> Assignment:
        o = _obj(data)
        return cls(_req(o, "piece", int), PeerId(_req(o, "source", str)), _req(o, "addr", str),
                   _req(o, "size", int), _req(o, "sha256", str),
                   _opt(o, "is_cdn", bool, False))


@dataclass(frozen=True, slots=True)
class ScheduleResponse:
    """``action`` is one of ACTIONS; ``task`` carries what is known of the task."""

    action: str
    task: TaskView
    assignments: tuple[Assignment, ...] = ()
    wait_ms: int = 0
    message: str = ""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise BadInput(f"action must be one of {ACTIONS}")

    @classmethod
    def from_wire(cls, data: Any) -> ScheduleResponse:
        o = _obj(data)
        return cls(_req(o, "action", str), TaskView.from_wire(_req(o, "task", dict)),
                   tuple(Assignment.from_wire(a) for a in _opt(o, "assignments", list, [])),
                   _opt(o, "wait_ms", int, 0), _opt(o, "message", str, ""))

    def to_wire(self) -> dict:
        return {"action": self.action, "task": self.task.to_wire(),
                "assignments": [_plain(a) for a in self.assignments],
                "wait_ms": self.wait_ms, "message": self.message}


@dataclass(frozen=True, slots=True)
class Heartbeat:
    peer_id: PeerId

    @classmethod
    def from_wire(cls, data: Any) -> Heartbeat:
        return cls(PeerId(_req(_obj(data), "peer_id", str)))

    def to_wire(self) -> dict:
        return _plain(self)


@dataclass(frozen=True, slots=True)
class Announce:
    """A peer holds all of task ``task_id`` (whole-file ``sha256``) and serves it.

    Sent by a restarted daemon for the complete tasks in its store, so that
    it seeds them again without anybody asking for them first.
    """

    peer: PeerInfo
    task_id: TaskId
    sha256: str

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or not all(c in "0123456789abcdef" for c in self.sha256):
            raise BadInput("field 'sha256' must be 64 lowercase hex digits")

    @classmethod
    def from_wire(cls, data: Any) -> Announce:
        o = _obj(data)
        return cls(PeerInfo.from_wire(_req(o, "peer", dict)), TaskId(_req(o, "task_id", str)),
                   _req(o, "sha256", str))

    def to_wire(self) -> dict:
        return {"peer": _plain(self.peer), "task_id": str(self.task_id), "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Leave:
    """The peer leaves one task, or every task when ``task_id`` is None."""

    peer_id: PeerId
    task_id: TaskId | None = None

    @classmethod
    def from_wire(cls, data: Any) -> Leave:
        o = _obj(data)
        task = _opt(o, "task_id", str)
        return cls(PeerId(_req(o, "peer_id", str)), TaskId(task) if task else None)

    def to_wire(self) -> dict:
        return _plain(self)
