"""Helpers for the ecosystem tests that start local servers (MLflow, MONAI Label) or rendezvous (torchrun).

Imported by those test modules from this folder (pytest runs with ``--import-mode=importlib``, so they put
the folder on ``sys.path`` themselves, as the benchmarks do).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(proc: subprocess.Popen, url: str, accept: Callable[[int, bytes], object], name: str,
                  log_tail: Callable[[], str], timeout: float, request_timeout: float = 5.0, poll_s: float = 1.0):
    """GET ``url`` until ``accept(status, body)`` returns something other than None, and return that; the test
    fails (with ``log_tail()``) when ``proc`` exits first or nothing acceptable comes within ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited ({proc.returncode}):\n{log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=request_timeout) as r:
                answer = accept(r.status, r.read())
            if answer is not None:
                return answer
        except OSError:
            pass
        time.sleep(poll_s)
    pytest.fail(f"{name} not answering on {url} after {timeout} s:\n{log_tail()}")
