"""The network lab: N hosts as network namespaces with real per-host bandwidth.

Modules: ``netns`` (namespaces, bridge, veth, tc, cleanup), ``procs``
(processes inside hosts, always killed), ``tools`` (install the Debian tools
on demand), ``probe`` (measured per-host TCP goodput), ``bound`` (Kumar &
Ross), ``torrent`` (bencode and .torrent files), ``systems`` (one runner per
system: nginx + curl, damselfly, aria2 + opentracker), ``cpu`` (machine CPU
during a run), ``run`` (one N: build the lab, probe, run every system),
``report`` (JSON, markdown, PNG). ``perf/swarm.py`` is the command line.

Kept free of imports so that ``python -m perf.lab.probe`` starts fast inside
every host.
"""
