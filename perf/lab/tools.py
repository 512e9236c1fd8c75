"""The Debian tools the lab drives, installed on demand.

``ensure`` installs what is missing with apt-get (the lab runs as root
anyway), so a fresh machine needs no manual step: ``tests/lab`` and
``perf/swarm.py`` both call it before they start. Debian's opentracker
package enables a systemd unit that would listen on every address; where
systemd runs, the unit is stopped and disabled again right after install,
because the lab only ever starts its own tracker on a lab address.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from perf.lab.netns import LabError

# command -> Debian package
PACKAGES = {"ip": "iproute2", "tc": "iproute2", "nginx": "nginx", "aria2c": "aria2",
            "opentracker": "opentracker", "curl": "curl", "openssl": "openssl"}
SYSTEMS_TOOLS = {"nginx": ["nginx", "curl"], "aria2": ["aria2c", "opentracker", "nginx"],
                 "damselfly": ["nginx"]}


def missing(commands) -> list[str]:
    return sorted({PACKAGES[c] for c in commands if shutil.which(c) is None})


def ensure(commands) -> None:
    """Install the Debian packages of ``commands`` that are not on PATH."""
    packages = missing(commands)
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"need root to apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run = dict(env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                           *packages], **run)
    if proc.returncode:
        subprocess.run(["apt-get", "update", "-q"], **run)
        proc = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends",
                               *packages], **run)
    if proc.returncode:
        raise LabError(f"apt-get install {' '.join(packages)} failed: {proc.stderr[-500:]}")
    if "opentracker" in packages and shutil.which("systemctl") and os.path.isdir(
            "/run/systemd/system"):
        subprocess.run(["systemctl", "disable", "--now", "opentracker"], **run)
    still = missing(commands)
    if still:
        raise LabError(f"still missing after apt-get: {' '.join(still)}")


def versions() -> dict[str, str]:
    """First line of each tool's version output, for the report."""
    probes = {"nginx": ["nginx", "-v"], "aria2c": ["aria2c", "--version"],
              "curl": ["curl", "--version"], "ip": ["ip", "-V"]}
    out = {}
    for name, cmd in probes.items():
        if shutil.which(cmd[0]) is None:
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True)
        text = (proc.stdout or proc.stderr).strip().splitlines()
        out[name] = text[0] if text else ""
    out["opentracker"] = "present" if shutil.which("opentracker") else "missing"
    return out
