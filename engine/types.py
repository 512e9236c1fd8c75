"""Domain values shared by every side: peers, supernode, CDN, tests.

Each value is a frozen, slotted dataclass that validates when it is built, so
a value that exists is a valid value. Parsing from text goes through named
constructors (``Digest.parse``, ``TaskId.of``); ``__init__`` only checks.

``hashlib`` is imported inside the methods that hash: loading it starts
OpenSSL, a few milliseconds that dfget (which imports this module and never
hashes) would pay at every start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NewType

from engine.errors import BadInput

PieceIndex = NewType("PieceIndex", int)

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_PEER_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}\Z")
_DIGEST_HEX_LEN = {"sha256": 64, "md5": 32}


@dataclass(frozen=True, slots=True)
class TaskId:
    """A task: one file version, named by 64 lowercase hex characters."""

    hex: str

    def __post_init__(self) -> None:
        if not isinstance(self.hex, str) or not _HEX64.match(self.hex):
            raise BadInput(f"task id must be 64 lowercase hex characters, got {self.hex!r}")

    @classmethod
    def of(cls, *parts: str) -> TaskId:
        """Hash the given identity parts (already canonical) into a task id."""
        import hashlib  # here, not at the top: see the module docstring
        h = hashlib.sha256()
        for part in parts:
            data = part.encode()
            h.update(len(data).to_bytes(8, "big"))  # length-prefix: no ambiguity
            h.update(data)
        return cls(h.hexdigest())

    def __str__(self) -> str:
        return self.hex


@dataclass(frozen=True, slots=True)
class PeerId:
    """A peer (one dfdaemon on one host, or the CDN), printable and URL-safe."""

    value: str

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not _PEER_ID.match(self.value):
            raise BadInput(f"peer id must match {_PEER_ID.pattern}, got {self.value!r}")

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Digest:
    """An expected or computed content digest, ``algorithm:hex``."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = _DIGEST_HEX_LEN.get(self.algorithm)
        if want is None:
            raise BadInput(f"unsupported digest algorithm {self.algorithm!r} (use sha256 or md5)")
        if len(self.hex) != want or not all(c in "0123456789abcdef" for c in self.hex):
            raise BadInput(f"{self.algorithm} digest must be {want} lowercase hex characters")

    @classmethod
    def parse(cls, text: str) -> Digest:
        algorithm, sep, hexpart = text.strip().partition(":")
        if not sep:
            raise BadInput(f"digest must look like sha256:<hex> or md5:<hex>, got {text!r}")
        return cls(algorithm.lower(), hexpart.lower())

    @classmethod
    def sha256_of(cls, data: bytes | memoryview) -> Digest:
        import hashlib
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def hasher(self):  # -> hashlib._Hash
        import hashlib
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


@dataclass(frozen=True, slots=True)
class PieceRange:
    """Bytes ``[start, end)`` of a file; ``end`` is exclusive."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not (0 <= self.start <= self.end):
            raise BadInput(f"bad piece range [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.start
