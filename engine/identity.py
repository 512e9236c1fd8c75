"""Task identity: which downloads are "the same file" and so one swarm.

A task id is sha256 (``TaskId.of``, length-prefixed parts) over:

1. the canonical URL: scheme and host lower-cased, the default port, the
   userinfo and the fragment dropped, and the *filtered* query parameters
   removed. Filtered by default are the signature parameters of S3, GCS and
   OSS presigned URLs (``X-Amz-Signature``, ``Expires``, ``X-Goog-*``...):
   two hosts holding differently signed URLs for one object want the same
   bytes. The caller may name more parameters. Names match without regard to
   case; the remaining parameters keep their order, because reordering could
   merge two URLs that a server tells apart, and a false merge (wrong bytes
   under one id) is worse than a missed one (a second swarm);
2. the tag, which lets a caller keep apart what the URL alone would merge;
3. the expected digest, when given, so a wrong expectation cannot join (and
   fail) the swarm of the right one.

A registry blob (``/v2/<name>/blobs/sha256:<hex>``) is content-addressed: its
id is the digest alone, whatever the registry host, repository, query or tag,
so one layer is one task across repositories and mirrors. An expected digest
that disagrees with the blob's own digest is refused as bad input.

The canonical URL still contains the path and unfiltered query; it is used
only for hashing and is never logged or stored (use engine.meta.redact_url).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from engine.errors import BadInput
from engine.types import Digest, TaskId

SIGNATURE_PARAMS = frozenset(p.lower() for p in (
    # AWS S3 SigV4 and SigV2 presigned URLs
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
    "X-Amz-Security-Token", "X-Amz-SignedHeaders", "X-Amz-Algorithm",
    "Signature", "Expires", "AWSAccessKeyId",
    # Alibaba OSS
    "OSSAccessKeyId", "security-token",
    # Google Cloud Storage V4 and V2
    "X-Goog-Signature", "X-Goog-Credential", "X-Goog-Date", "X-Goog-Expires",
    "X-Goog-Algorithm", "X-Goog-SignedHeaders", "GoogleAccessId",
))

# Any prefix before /v2/ is allowed: mirrors are often mounted under a path.
_BLOB = re.compile(r"/v2/(?:[^/]+/)+blobs/(sha256:[0-9a-f]{64})\Z")
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class TaskIdentity:
    """What a task id was computed from; ``blob_digest`` is set for registry blobs."""

    task_id: TaskId
    canonical_url: str
    tag: str
    digest: Digest | None
    blob_digest: Digest | None = None

    @property
    def pinned(self) -> bool:
        """True when the content is fixed by a digest, so it never needs revalidating."""
        return self.digest is not None or self.blob_digest is not None

    @classmethod
    def of(cls, url: str, *, tag: str = "", digest: Digest | None = None,
           filter_params: tuple[str, ...] | list[str] = (),
           default_filters: bool = True) -> TaskIdentity:
        """The identity of a download of ``url`` (see the module docstring)."""
        drop = {p.lower() for p in filter_params}
        if default_filters:
            drop |= SIGNATURE_PARAMS
        canonical = canonical_url(url, drop)
        blob = registry_blob_digest(url)
        if blob is not None:
            if digest is not None and digest != blob:
                raise BadInput(f"expected digest {digest} disagrees with the blob digest {blob}")
            return cls(TaskId.of("blob", str(blob)), canonical, tag, digest, blob)
        return cls(TaskId.of("url", canonical, "tag", tag, "digest",
                             str(digest) if digest else ""), canonical, tag, digest)


def task_id_for(url: str, *, tag: str = "", digest: Digest | None = None,
                filter_params: tuple[str, ...] | list[str] = ()) -> TaskId:
    """Shorthand for ``TaskIdentity.of(...).task_id`` with the default filters."""
    return TaskIdentity.of(url, tag=tag, digest=digest, filter_params=filter_params).task_id


def canonical_url(url: str, drop: set[str] | frozenset[str]) -> str:
    """``url`` normalised for identity, without the query parameters in ``drop``
    (lower-case names)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadInput(f"unparseable url: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise BadInput("url must be http(s) with a host")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal: hostname strips the brackets
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
            if k.lower() not in drop]
    return urlunsplit((scheme, host, parts.path or "/", urlencode(kept), ""))


def registry_blob_digest(url: str) -> Digest | None:
    """The digest of a registry blob URL (``/v2/<name>/blobs/sha256:<hex>``), else None."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    m = _BLOB.search(path)
    return Digest.parse(m.group(1)) if m else None
