"""Garbage-collector settings for the long-running processes (`smartgen api`, `worker`)."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once start-up is done: move everything alive (modules, the app, clients and pools)
    out of the collector's sight, and collect the young generation less often.

    A collection walks every tracked object of the generations it collects, and right after
    start-up those are mostly long-lived: a full collection stalled every request in flight
    (`bench/HISTORY.md` has the figures). Frozen objects are never walked again; cycles
    among new objects are still collected. Called by the CLI only: frozen objects are never freed,
    which is right for a server's start-up state and wrong for a test session."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, YOUNG_THRESHOLD), gen1, gen2)
