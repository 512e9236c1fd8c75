"""Discrete-event simulation of a damselfly swarm driving the real scheduler core.

``fluid`` is the bandwidth model (flows, rates, events); ``swarm`` runs the
supernode's ``Scheduler`` and engine-like peers on it. ``python -m perf.sim``
prints T(N) against the Kumar & Ross bound and the scheduler's CPU time.
"""
