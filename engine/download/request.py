"""The values a download is described and watched by.

``DownloadRequest`` validates when built, so the engine never sees a
half-valid request, and computes the task identity once (engine.identity):
the peer knows its task id before any network call, which is what lets a
second request on the same host complete from the local store.

The request headers are secrets (an Authorization, a cookie): they are kept
out of ``repr`` so that logging a request never prints them, and the engine
sends them only to the supernode's register call and to the origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from engine.errors import BadInput
from engine.identity import TaskIdentity
from engine.types import Digest, TaskId

STATES = ("pending", "downloading", "back_to_source", "verifying", "complete", "failed")


@dataclass(frozen=True, slots=True)
class DownloadRequest:
    """One file to fetch. ``digest`` (sha256 or md5) is checked over the whole file."""

    url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    digest: Digest | None = None
    tag: str = ""
    filter_params: tuple[str, ...] = ()
    back_source: bool = True
    timeout: float | None = None
    identity: TaskIdentity = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise BadInput("url must be a string")
        if not isinstance(self.headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()):
            raise BadInput("headers must map strings to strings")
        for name, value in self.headers.items():
            if not name or any(c in name for c in ":\r\n\0 \t") or any(
                    c in value for c in "\r\n\0"):
                raise BadInput("a header name or value contains a forbidden character")
        if self.digest is not None and not isinstance(self.digest, Digest):
            raise BadInput("digest must be a Digest (use Digest.parse)")
        if not isinstance(self.tag, str):
            raise BadInput("tag must be a string")
        if not isinstance(self.filter_params, tuple) or not all(
                isinstance(p, str) and p for p in self.filter_params):
            raise BadInput("filter_params must be a tuple of non-empty strings")
        if not isinstance(self.back_source, bool):
            raise BadInput("back_source must be a bool")
        if self.timeout is not None and (
                isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                or not math.isfinite(self.timeout) or self.timeout <= 0):
            raise BadInput("timeout must be a positive number of seconds or None")
        # Also validates the URL: http(s), a host, parseable.
        identity = TaskIdentity.of(self.url, tag=self.tag, digest=self.digest,
                                   filter_params=self.filter_params)
        object.__setattr__(self, "identity", identity)

    @classmethod
    def of(cls, url: str, *, headers: dict[str, str] | None = None, digest: str | None = None,
           tag: str = "", filter_params: list[str] | tuple[str, ...] = (),
           back_source: bool = True, timeout: float | None = None) -> DownloadRequest:
        """Build from loose inputs (a CLI, a JSON request): digest as text."""
        return cls(url, dict(headers or {}), Digest.parse(digest) if digest else None, tag,
                   tuple(filter_params), back_source, timeout)

    @property
    def task_id(self) -> TaskId:
        return self.identity.task_id


@dataclass(slots=True)
class Progress:
    """A snapshot of one download; handed to ``on_progress`` callbacks."""

    task_id: TaskId
    length: int | None = None
    done_bytes: int = 0
    pieces_done: int = 0
    piece_count: int | None = None
    from_peers: int = 0
    from_cdn: int = 0
    from_origin: int = 0
    state: str = "pending"

    def copy(self) -> Progress:
        return Progress(self.task_id, self.length, self.done_bytes, self.pieces_done,
                        self.piece_count, self.from_peers, self.from_cdn, self.from_origin,
                        self.state)


@dataclass(slots=True)
class DownloadStats:
    """Counters over every download of one Downloader (monotonic)."""

    downloads: int = 0          # download() calls
    local_hits: int = 0         # answered from the local store, no network
    joined: int = 0             # joined a download already running in this process
    completed: int = 0
    failed: int = 0
    back_to_source: int = 0     # downloads that went to the origin themselves
    bytes_from_peers: int = 0
    bytes_from_cdn: int = 0
    bytes_from_origin: int = 0
    pieces_from_peers: int = 0
    pieces_from_cdn: int = 0
    pieces_failed: int = 0      # every failed attempt, whatever the reason
    pieces_corrupt: int = 0
    pieces_refused: int = 0
    pieces_timeout: int = 0
    supernode_failovers: int = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}
