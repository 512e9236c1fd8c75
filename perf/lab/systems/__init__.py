"""One runner per system. Each takes a ``Setup`` and returns a ``Outcome``.

``central`` (nginx + curl), ``damselfly`` (nginx origin, supernode, dfdaemons,
dfget), ``bittorrent`` (opentracker, aria2c seeders and leechers). The
harness around them (``perf.lab.run``) measures bytes, CPU and checksums the
same way for all.
"""

from perf.lab.systems.aria2 import run_bittorrent
from perf.lab.systems.central import run_central
from perf.lab.systems.damselfly import run_damselfly

RUNNERS = {"nginx": run_central, "damselfly": run_damselfly, "aria2": run_bittorrent}
