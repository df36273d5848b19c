"""The peak memory `lungnod detect` reports (summary.json, report.html, terminal) is its own (or its input
conversion child's, where larger), also when it was started by a larger process: on Linux ru_maxrss would start
from the launcher's size."""

from __future__ import annotations

import subprocess
import sys

import numpy as np


def test_peak_memory_is_the_process_own_when_launched_by_a_larger_one():
    ballast = np.ones(int(1.2e9 // 8))          # this process: >= 1.2 GB resident when the child is forked
    assert ballast.sum() == ballast.size
    child = ("import resource; import numpy as np; from lungnod_ext.apps.process_memory import peak_rss_mb; "
             "a = np.ones(int(200e6 // 8)); assert a.sum() == a.size; "      # the child's own 200 MB
             "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300,
                         check=True).stdout.split()
    own_mb, ru_maxrss_mb = float(out[0]), int(out[1]) / 1024.0
    assert 200 < own_mb < 800, own_mb            # its 200 MB and imports, not the 1.2 GB it was forked from
    if sys.platform == "linux":
        assert ru_maxrss_mb > 1100, ru_maxrss_mb   # what the old figure would have said
