"""Event-stream listeners in this API process (`GET /events`), woken when an event for
their user passes through the bus. A wake-up says only "there is news": the listener reads
what is new from the event log, in order and exactly once, so it never depends on the
order or the completeness of pub/sub delivery."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any


class LocalSubscribers:
    def __init__(self) -> None:
        self._by_user: dict[str, set[asyncio.Event]] = {}
        self._ready: Callable[[], Awaitable[bool]] | None = None

    def when_ready(self, ready: Callable[[], Awaitable[bool]]) -> None:
        """`ready()` makes this process listen to the bus and says when it does."""
        self._ready = ready

    async def ready(self) -> bool:
        """Wait until wake-ups can arrive here (False: not within the wait; the stream
        still reads the log at every heartbeat)."""
        return True if self._ready is None else await self._ready()

    @contextmanager
    def subscribe(self, user_id: str) -> Iterator[asyncio.Event]:
        news = asyncio.Event()
        self._by_user.setdefault(user_id, set()).add(news)
        try:
            yield news
        finally:
            waiting = self._by_user.get(user_id)
            if waiting is not None:
                waiting.discard(news)
                if not waiting:
                    del self._by_user[user_id]

    def offer(self, message: dict[str, Any]) -> None:
        """A bus message: wake the listeners of the user it is for, if any."""
        if not self._by_user or message.get("method") != "emit":
            return
        room = message.get("room")
        if isinstance(room, str) and room.startswith("user:"):
            for news in self._by_user.get(room[5:], ()):
                news.set()

    def wake(self, user_id: str) -> None:
        """Wake the user's listeners (their session may have ended)."""
        for news in self._by_user.get(user_id, ()):
            news.set()

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_user.values())
