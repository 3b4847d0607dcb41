"""Host load for heartbeats, read from /proc where it exists (no third-party dependency)."""

from __future__ import annotations

import os
from pathlib import Path


class LoadSampler:
    """CPU usage needs two readings; the sampler keeps the previous one between heartbeats."""

    def __init__(self, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self._previous: tuple[int, int] | None = None

    def _cpu_times(self) -> tuple[int, int] | None:
        try:
            first = (self.proc / "stat").read_text().splitlines()[0].split()
        except (OSError, IndexError):
            return None
        if not first or first[0] != "cpu":
            return None
        values = [int(v) for v in first[1:] if v.isdigit()]
        # idle + iowait count as idle time.
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    def cpu_percent(self) -> float:
        times = self._cpu_times()
        if times is None:
            return self._loadavg_percent()
        previous, self._previous = self._previous, times
        total, idle = times
        if previous is not None and total > previous[0]:
            total, idle = total - previous[0], idle - previous[1]
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, 100.0 * (total - idle) / total)), 2)

    @staticmethod
    def _loadavg_percent() -> float:
        try:
            load = os.getloadavg()[0]
        except OSError:
            return 0.0
        return round(min(100.0, 100.0 * load / (os.cpu_count() or 1)), 2)

    def memory_percent(self) -> float:
        try:
            lines = (self.proc / "meminfo").read_text().splitlines()
        except OSError:
            return 0.0
        info: dict[str, int] = {}
        for line in lines:
            name, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                info[name] = int(parts[0])
        total = info.get("MemTotal", 0)
        available = info.get("MemAvailable", info.get("MemFree", 0))
        if total <= 0:
            return 0.0
        return round(min(100.0, max(0.0, 100.0 * (total - available) / total)), 2)
