"""Stopping child processes: SIGTERM to each, then a bounded wait, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable


def stop_children(children: Iterable[subprocess.Popen[bytes] | None], grace: float) -> None:
    """Ask every running child to stop, wait for all of them at most `grace` seconds in
    all, and kill those still running."""
    running = [p for p in children if p is not None]
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
