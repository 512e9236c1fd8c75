"""Bencode and single-file .torrent metainfo (BEP 3), enough for the aria2 baseline.

aria2c downloads torrents but does not make them, so the lab makes its own:
``make_torrent`` hashes the file piece by piece (SHA-1, as BEP 3 says) and
returns the metainfo bytes and the info hash.
"""

from __future__ import annotations

import hashlib
import os


def bencode(value) -> bytes:
    """Encode ints, bytes/str, lists and dicts (keys sorted as raw bytes)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes):
    """Decode one bencoded value (dict keys come back as bytes)."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int):
    c = data[i:i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1:end]), end + 1
    if c == b"l":
        out, i = [], i + 1
        while data[i:i + 1] != b"e":
            v, i = _decode(data, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        d, i = {}, i + 1
        while data[i:i + 1] != b"e":
            k, i = _decode(data, i)
            d[k], i = _decode(data, i)
        return d, i + 1
    if c.isdigit():
        colon = data.index(b":", i)
        n = int(data[i:colon])
        return data[colon + 1:colon + 1 + n], colon + 1 + n
    raise ValueError(f"bad bencode at byte {i}")


def make_torrent(path: str, announce: str, piece_length: int = 1 << 20) -> tuple[bytes, str]:
    """(metainfo bytes, hex info hash) of a single-file torrent for ``path``."""
    hashes = []
    with open(path, "rb") as f:
        while chunk := f.read(piece_length):
            hashes.append(hashlib.sha1(chunk).digest())
    info = {"name": os.path.basename(path), "length": os.path.getsize(path),
            "piece length": piece_length, "pieces": b"".join(hashes)}
    meta = {"announce": announce, "info": info}
    return bencode(meta), hashlib.sha1(bencode(info)).hexdigest()
