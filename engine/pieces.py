"""Piece math and the piece-size policy.

Why this policy. A swarm pipelines only if a file has many more pieces than
there are peers fetching it at once: a peer can upload a piece only after it
holds all of it, so with P pieces the last peer waits roughly (hops / P) of a
whole-file time longer than the bound. That pushes pieces small. Each piece
also costs a schedule decision, an HTTP request and a sha256 call, about a
millisecond in all; that pushes pieces large. Dragonfly uses 4 MiB up to
15 MiB; its Rust client uses length/500 rounded to a power of two within
4-64 MiB, which gives a 100 MiB layer only 25 pieces: too few for 40 hosts.

We aim at about 512 pieces (length / 512, rounded up to a power of two) and
clamp to [1 MiB, 64 MiB]. At 100 Mbit/s a 1 MiB piece takes 84 ms, so the
~1 ms per-piece overhead stays near 1 %; a 100 MiB file gets 100 pieces and a
32 GiB file gets 512 pieces of 64 MiB. A file smaller than one piece is one
piece. Power-of-two sizes keep pieces page-aligned for sendfile and mmap.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import BadInput
from engine.types import PieceIndex, PieceRange

MIN_PIECE_SIZE = 1 << 20
MAX_PIECE_SIZE = 64 << 20
TARGET_PIECES = 512


def choose_piece_size(length: int | None) -> int:
    """Piece size for a file of ``length`` bytes (unknown length: the minimum)."""
    if length is None or length <= MIN_PIECE_SIZE * TARGET_PIECES:
        return MIN_PIECE_SIZE
    size = 1 << ((length + TARGET_PIECES - 1) // TARGET_PIECES - 1).bit_length()
    return min(size, MAX_PIECE_SIZE)


@dataclass(frozen=True, slots=True)
class PieceLayout:
    """How a file of ``length`` bytes is cut into pieces of ``piece_size``.

    A zero-length file has zero pieces; every other file has at least one and
    only the last piece may be short.
    """

    length: int
    piece_size: int

    def __post_init__(self) -> None:
        if self.length < 0:
            raise BadInput(f"length must be >= 0, got {self.length}")
        if self.piece_size <= 0 or self.piece_size & 4095:
            raise BadInput(f"piece size must be a positive multiple of 4096, got {self.piece_size}")

    @classmethod
    def for_length(cls, length: int) -> PieceLayout:
        return cls(length, choose_piece_size(length))

    @property
    def count(self) -> int:
        return (self.length + self.piece_size - 1) // self.piece_size

    def range(self, index: int) -> PieceRange:
        if not 0 <= index < self.count:
            raise BadInput(f"piece {index} out of range (file has {self.count} pieces)")
        start = index * self.piece_size
        return PieceRange(start, min(start + self.piece_size, self.length))

    def size_of(self, index: int) -> int:
        return self.range(index).length

    def indices(self) -> range:
        return range(self.count)

    def piece_at(self, offset: int) -> PieceIndex:
        if not 0 <= offset < self.length:
            raise BadInput(f"offset {offset} outside file of {self.length} bytes")
        return PieceIndex(offset // self.piece_size)
