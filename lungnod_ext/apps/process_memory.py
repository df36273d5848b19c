"""A process's own peak resident memory (MB), as ``lungnod detect`` reports it; imports neither torch nor MONAI."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident memory, MB: Linux's VmHWM (the high-water mark of its own memory since
    exec), else ru_maxrss, which on Linux starts from the launching process's size when that was larger (a
    forked child keeps its parent's high-water mark across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0   # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
