"""Run `python -m smartgen <args>` with a cProfile that a signal switches on and off, to
count the Python function calls a process makes during a bench's measured window
(`bench/peers.py --calls`):

    python bench/counted.py <out.pstats> api|worker [args...]

SIGUSR1 starts counting in the main thread (the event loop's); SIGUSR2 stops and writes
the profile to `out.pstats` (pstats format). Counts, unlike CPU time, do not move with the
machine's speed, so two checkouts compare run against run; the CPU figures of a counted
run are inflated by the profiler and are not to be compared with anything.
"""

from __future__ import annotations

import cProfile
import runpy
import signal
import sys
from types import FrameType


def main() -> None:
    out, args = sys.argv[1], sys.argv[2:]
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        profiler.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = ["smartgen", *args]
    runpy.run_module("smartgen", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
