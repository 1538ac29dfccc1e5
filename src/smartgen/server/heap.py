"""Garbage-collector settings for the long-running processes (`smartgen api`, `worker`)."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Once start-up is done: move everything alive (modules, the app, clients and pools)
    out of the collector's sight, and collect the young generation less often.

    A collection walks every tracked object of the generations it collects. Right after
    start-up those held ~100 MB of long-lived objects: a full collection stalled every
    request in flight for tens of milliseconds (it set the API's p99 latency under load),
    and the first collections of the older young generation took ~40 ms while the start-up
    objects were being promoted. Frozen objects are never walked again; cycles among new
    objects are still collected. Called by the CLI only: frozen objects are never freed,
    which is right for a server's start-up state and wrong for a test session."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, YOUNG_THRESHOLD), gen1, gen2)
