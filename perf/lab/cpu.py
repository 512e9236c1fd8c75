"""Machine CPU during a run, and what machine the numbers came from.

``CpuMonitor`` samples machine-wide CPU use (all cores, via psutil) every
``interval`` seconds in a thread while a system's clients run: from the
moment they start to the moment the last one has finished (``stop``), not
through the teardown after it. A run is flagged
``cpu_bound`` when the machine was busy more than ``CPU_BOUND`` of the time
on average: then the result says more about this machine than about the
system's network behaviour (emulating 40 hosts at 100 Mbit/s on two cores
costs real CPU in the kernel alone).
"""

from __future__ import annotations

import os
import platform
import threading
import time

import psutil

CPU_BOUND = 0.90


class CpuMonitor:
    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._start_times = None
        self._started_at = self._stopped_at = 0.0

    def __enter__(self) -> CpuMonitor:
        self._start_times = psutil.cpu_times()
        self._started_at = time.monotonic()
        psutil.cpu_percent(None)
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._start_times is not None

    def stop(self) -> None:
        """End the window (the first call counts; later ones do nothing)."""
        if not self.started or self._stopped_at:
            return
        self._stopped_at = time.monotonic()
        end = psutil.cpu_times()
        self._stop.set()
        self._thread.join()
        self.mean = _busy_fraction(self._start_times, end)

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(psutil.cpu_percent(None) / 100.0)

    def summary(self) -> dict:
        mean = getattr(self, "mean", 0.0)
        peak = max(self.samples, default=mean)
        saturated = sum(s >= 0.97 for s in self.samples) / max(1, len(self.samples))
        return {"cpu_mean": round(mean, 3), "cpu_peak": round(peak, 3),
                "cpu_window_s": round(self._stopped_at - self._started_at, 3),
                # All cores' busy time over the window: what the run cost the machine.
                "cpu_seconds": round(mean * (self._stopped_at - self._started_at)
                                     * (os.cpu_count() or 1), 2),
                "cpu_saturated_share": round(saturated, 3), "cpu_bound": mean > CPU_BOUND}


def _busy_fraction(before, after) -> float:
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
    return max(0.0, min(1.0, 1 - idle / total)) if total > 0 else 0.0


def machine() -> dict:
    """Where the numbers came from."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"hostname": platform.node(), "cpu_model": model, "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "kernel": platform.release(), "os": _os_release(),
            "python": platform.python_version()}


def _os_release() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()
