"""Kumar & Ross: the least time in which any scheme can give a file to N hosts.

R. Kumar and K. W. Ross, "Peer-to-peer file distribution: a fluid model"
(2006): with servers of total upload ``Us``, N downloaders of uploads
``u_i`` and downloads ``d_i``, no scheme finishes before

    T_min = max( S / Us,  S / min(d_i),  N * S / (Us + sum(u_i)) )

seconds: the servers must send every byte at least once; the slowest
downloader must receive every byte; and N copies must be uploaded by
everyone together. The bound is achievable in the fluid limit, so a system
near it is near perfect, not just better than the others.

Rates here are bits per second (measured goodput), sizes bytes.
"""

from __future__ import annotations

from collections.abc import Sequence


def kumar_ross(size_bytes: int, server_up_bps: float, up_bps: Sequence[float],
               down_bps: Sequence[float]) -> float:
    """T_min in seconds for ``len(up_bps)`` downloaders (see the module docstring)."""
    n = len(up_bps)
    if n == 0:
        return 0.0
    if len(down_bps) != n:
        raise ValueError("one upload and one download rate per host")
    if server_up_bps <= 0 or min(down_bps) <= 0:
        raise ValueError("rates must be > 0")
    bits = size_bytes * 8
    return max(bits / server_up_bps,
               bits / min(down_bps),
               n * bits / (server_up_bps + sum(up_bps)))


def which_term(size_bytes: int, server_up_bps: float, up_bps: Sequence[float],
               down_bps: Sequence[float]) -> str:
    """Which of the three terms binds: ``server``, ``download`` or ``swarm``."""
    bits = size_bytes * 8
    n = len(up_bps)
    terms = {"server": bits / server_up_bps, "download": bits / min(down_bps),
             "swarm": n * bits / (server_up_bps + sum(up_bps))}
    return max(terms, key=terms.__getitem__)
