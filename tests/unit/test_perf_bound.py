"""The Kumar & Ross bound and the .torrent maker of the perf lab: pure functions."""

from __future__ import annotations

import hashlib

import pytest

from perf.lab.bound import kumar_ross, which_term
from perf.lab.torrent import bdecode, bencode, make_torrent

MIB = 1 << 20


def test_each_term_binds_where_it_should():
    size = 100 * MIB
    bits = size * 8
    # One host: limited by its own download (100 < 200).
    assert kumar_ross(size, 200e6, [100e6], [100e6]) == pytest.approx(bits / 100e6)
    assert which_term(size, 200e6, [100e6], [100e6]) == "download"
    # Slow server, fast hosts: the server must send the file once.
    assert kumar_ross(size, 10e6, [1e9], [1e9]) == pytest.approx(bits / 10e6)
    assert which_term(size, 10e6, [1e9], [1e9]) == "server"
    # Hosts that upload little: N copies through Us + sum(u).
    t = kumar_ross(size, 200e6, [10e6] * 40, [100e6] * 40)
    assert t == pytest.approx(40 * bits / (200e6 + 400e6))
    assert which_term(size, 200e6, [10e6] * 40, [100e6] * 40) == "swarm"


def test_the_defaults_of_the_sweep():
    # 100 MiB, origin 200 Mbit/s, 40 hosts at 100: download-bound, 8.39 s;
    # a central server alone needs N * S / Us = 167.8 s.
    size = 100 * MIB
    assert kumar_ross(size, 200e6, [100e6] * 40, [100e6] * 40) == pytest.approx(8.389, abs=1e-3)
    assert 40 * size * 8 / 200e6 == pytest.approx(167.77, abs=0.01)


def test_slowest_download_and_heterogeneous_uploads_count():
    size = 8 * MIB
    t = kumar_ross(size, 1e9, [50e6, 150e6], [100e6, 40e6])
    assert t == pytest.approx(size * 8 / 40e6)
    assert kumar_ross(size, 1e9, [], []) == 0.0


@pytest.mark.parametrize("server, down", [(0, [1e6]), (1e6, [0])])
def test_rates_must_be_positive(server, down):
    with pytest.raises(ValueError):
        kumar_ross(MIB, server, [1e6], down)


def test_bencode_roundtrip_and_key_order():
    value = {"b": [1, -2, b"x"], "a": {"z": b"", "y": 0}}
    data = bencode(value)
    assert data == b"d1:ad1:yi0e1:z0:e1:bli1ei-2e1:xee"
    assert bdecode(data) == {b"a": {b"y": 0, b"z": b""}, b"b": [1, -2, b"x"]}
    with pytest.raises(TypeError):
        bencode(True)
    with pytest.raises(ValueError):
        bdecode(data + b"x")


def test_make_torrent_hashes_every_piece(tmp_path):
    path = tmp_path / "file.bin"
    data = bytes(range(256)) * 10_000               # 2.44 pieces of 1 MiB
    path.write_bytes(data)
    meta, info_hash = make_torrent(str(path), "http://10.77.0.1:6969/announce", MIB)
    decoded = bdecode(meta)
    info = decoded[b"info"]
    assert decoded[b"announce"] == b"http://10.77.0.1:6969/announce"
    assert info[b"length"] == len(data) and info[b"piece length"] == MIB
    pieces = [data[i:i + MIB] for i in range(0, len(data), MIB)]
    assert info[b"pieces"] == b"".join(hashlib.sha1(p).digest() for p in pieces)
    assert info_hash == hashlib.sha1(bencode({k.decode(): v for k, v in info.items()})).hexdigest()
