"""Each user's webhook endpoints as a worker process last read them, for the end of every
job: almost no user has any, and reading them from the store at each job's end was one
store round trip in four of a worker's (`bench/HISTORY.md`, eighth round).

A remembered list is used while the user's change token (`ports.WebhookQueue`, one Redis
key rewritten after every write of the user's endpoints) is the one read with it; the
token is read at each job's end, the reads of concurrent job ends in one round trip. So
an endpoint written before a job ends is seen by that job's end: the write moves the
token before its request returns, and the list is read again when the token moved. The
token is read before the list, so a write between the two leaves a list remembered under
the old token, read again next time. A token that cannot be read means a read of the
store, as before; a list is also read again after `max_age` seconds, which bounds what a
token lost with Redis's data could hide.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Final

from smartgen.models import WebhookEndpoint
from smartgen.ports import WebhookQueue
from smartgen.store.base import Store

log = logging.getLogger("smartgen.webhooks")
# `service.announce` reads at most this many of a user's endpoints.
ENDPOINTS_READ: Final = 1000


class CachedEndpoints:
    def __init__(
        self,
        store: Store,
        tokens: WebhookQueue,
        *,
        max_age: float = 60.0,
        max_users: int = 10_000,
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._max_age = max_age
        self._max_users = max_users
        # user id -> (change token, read at (monotonic), the endpoints)
        self._known: OrderedDict[str, tuple[str | None, float, list[WebhookEndpoint]]] = (
            OrderedDict()
        )
        self.reads = 0  # store reads, for tests and the bench

    async def for_user(self, user_id: str) -> list[WebhookEndpoint]:
        """The user's endpoints, current as of this call."""
        try:
            token = await self._tokens.change_token(user_id)
        except Exception as exc:  # the store still answers, as it did before the cache
            log.debug("webhook change token not read: %s", type(exc).__name__)
            self._known.pop(user_id, None)
            return await self._read(user_id)
        now = time.monotonic()
        known = self._known.get(user_id)
        if known is not None and known[0] == token and now - known[1] < self._max_age:
            self._known.move_to_end(user_id)
            return known[2]
        endpoints = await self._read(user_id)
        self._known[user_id] = (token, now, endpoints)
        self._known.move_to_end(user_id)
        while len(self._known) > self._max_users:
            self._known.popitem(last=False)
        return endpoints

    async def _read(self, user_id: str) -> list[WebhookEndpoint]:
        self.reads += 1
        return await self._store.webhooks.list_for_user(user_id, limit=ENDPOINTS_READ)
