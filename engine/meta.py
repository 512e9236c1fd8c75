"""Task metadata: what a task directory's ``meta`` file says, and how it is kept honest.

The file is JSON with a ``checksum`` field: sha256 over the canonical JSON of
every other field. A torn write (a crash mid-write on a filesystem that
reorders) or a hand edit fails the checksum, and the task is discarded rather
than served. Writes go to a temporary name, are fsynced and renamed, so a
reader sees the old file or the new one, never a mix.

The URL stored here has no query string and no credentials: signed query
parameters and userinfo are secrets and never reach the disk.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit, urlunsplit

import orjson

from engine.errors import BadInput, StoreError, from_oserror
from engine.pieces import PieceLayout
from engine.types import TaskId

FORMAT = 1
STATES = ("partial", "complete")


def redact_url(url: str) -> str:
    """The URL without userinfo, query or fragment: safe to store and log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@dataclass(frozen=True, slots=True)
class TaskMeta:
    """Everything needed to serve a task again after a restart."""

    task_id: TaskId
    url: str
    length: int
    piece_size: int
    piece_digests: tuple[str | None, ...]
    state: str = "partial"
    sha256: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    extra: dict = field(default_factory=dict)
    # The data file's mtime when the task completed (engine.taskfile:
    # TaskFile.changed_since_complete); None for a partial task.
    data_mtime_ns: int | None = None
    # False for a completion not yet synced to the disk (TaskFile.finish with
    # durable=False): after a crash its pieces are checked like a partial
    # task's (engine.store.PieceStore.scan). Metas from before the field: True.
    synced: bool = True

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise BadInput(f"task state must be one of {STATES}")
        if len(self.piece_digests) != self.layout.count:
            raise BadInput(
                f"{len(self.piece_digests)} piece digests for {self.layout.count} pieces")
        if self.state == "complete" and (
                self.sha256 is None or any(d is None for d in self.piece_digests)):
            raise BadInput("a complete task needs every piece digest and the file sha256")

    @classmethod
    def new(cls, task_id: TaskId, url: str, layout: PieceLayout, **kw) -> TaskMeta:
        return cls(task_id, redact_url(url), layout.length, layout.piece_size,
                   (None,) * layout.count, **kw)

    @property
    def layout(self) -> PieceLayout:
        return PieceLayout(self.length, self.piece_size)

    def with_digest(self, index: int, sha256: str) -> TaskMeta:
        digests = list(self.piece_digests)
        digests[index] = sha256
        return replace(self, piece_digests=tuple(digests))

    def completed(self, sha256: str, data_mtime_ns: int | None = None,
                  synced: bool = True) -> TaskMeta:
        return replace(self, state="complete", sha256=sha256, data_mtime_ns=data_mtime_ns,
                       synced=synced)

    def to_bytes(self) -> bytes:
        body = self._body()
        body["checksum"] = _checksum(body)
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> TaskMeta:
        """Parse and check a meta file; anything torn or odd is a StoreError."""
        try:
            body = orjson.loads(data)
            checksum = body.pop("checksum")
            if checksum != _checksum(body):
                raise StoreError("meta checksum mismatch (torn or edited)")
            if body.pop("format") != FORMAT:
                raise StoreError("unknown meta format")
            return cls(task_id=TaskId(body.pop("task_id")),
                       piece_digests=tuple(body.pop("piece_digests")), **body)
        except StoreError:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, BadInput) as exc:
            raise StoreError(f"unreadable task metadata: {exc}") from exc

    def _body(self) -> dict:
        return {"format": FORMAT, "task_id": self.task_id.hex, "url": self.url,
                "length": self.length, "piece_size": self.piece_size,
                "piece_digests": list(self.piece_digests), "state": self.state,
                "sha256": self.sha256, "etag": self.etag,
                "last_modified": self.last_modified, "extra": self.extra,
                "data_mtime_ns": self.data_mtime_ns, "synced": self.synced}


def _checksum(body: dict) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def write_atomically(path: str, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or none of it;
    ``durable``: synced to the disk before it replaces what was there."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise from_oserror(exc, f"writing {path}") from exc
