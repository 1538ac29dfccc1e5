"""Webhooks on the SQL stores: the statements of the `webhooks`, `webhook_secrets`,
`webhook_deliveries` and `webhook_attempts` tables (PostgreSQL's spelling, rewritten by
each driver as the jobs' are) and the repository, beside `repository.py`, which builds it
with the others."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import Any

from smartgen.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from smartgen.store.sql.repository import Row, _Repository


def _columns(record: type) -> tuple[list[str], str, list[int]]:
    names = [f.name for f in fields(record)]
    times = [i for i, name in enumerate(names) if name.endswith(("_at", "_since"))]
    return names, ", ".join(names), times


_HOOK, HOOK_COLS, _HOOK_TIMES = _columns(WebhookEndpoint)
_DELIVERY, DELIVERY_COLS, _DELIVERY_TIMES = _columns(WebhookDelivery)
_ATTEMPT, ATTEMPT_COLS, _ATTEMPT_TIMES = _columns(WebhookAttempt)
_HOOK_EVENTS, _HOOK_ENABLED = _HOOK.index("events"), _HOOK.index("enabled")
_PAYLOAD = _DELIVERY.index("payload")


def _marks(count: int) -> str:
    return ", ".join(f"${i}" for i in range(1, count + 1))


WEBHOOK_STATEMENTS = {
    "hook_insert": (
        f"INSERT INTO webhooks ({HOOK_COLS}) "
        "SELECT $1::varchar, $2::varchar, $3::text, $4::jsonb, $5::text, $6::varchar, "
        "$7::boolean, $8::timestamptz, $9::timestamptz, $10::timestamptz "
        "WHERE (SELECT count(*) FROM webhooks WHERE user_id = $2) < $11::integer"
    ),
    "hook_by_id": f"SELECT {HOOK_COLS} FROM webhooks WHERE webhook_id = $1",
    "hook_by_id_for_user": (
        f"SELECT {HOOK_COLS} FROM webhooks WHERE webhook_id = $1 AND user_id = $2"
    ),
    "hooks_for_user": (
        f"SELECT {HOOK_COLS} FROM webhooks WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "hook_update": (
        "UPDATE webhooks SET url = COALESCE($3::text, url), "
        "events = COALESCE($4::jsonb, events), "
        "description = COALESCE($5::text, description), "
        "enabled = COALESCE($6::boolean, enabled), "
        "failing_since = CASE WHEN $6::boolean THEN NULL ELSE failing_since END, "
        f"updated_at = $7 WHERE webhook_id = $1 AND user_id = $2 RETURNING {HOOK_COLS}"
    ),
    "hook_delete": "DELETE FROM webhooks WHERE webhook_id = $1 AND user_id = $2",
    "hook_succeeded": "UPDATE webhooks SET failing_since = NULL WHERE webhook_id = $1",
    "hook_failed": (
        "UPDATE webhooks SET failing_since = COALESCE(failing_since, $2) WHERE webhook_id = $1"
    ),
    "hook_disable": (
        "UPDATE webhooks SET enabled = FALSE, updated_at = $2 "
        "WHERE webhook_id = $1 AND enabled = TRUE"
    ),
    "hooks_delete_for_user": "DELETE FROM webhooks WHERE user_id = $1",
    "hook_secret": "SELECT secret FROM webhook_secrets WHERE user_id = $1",
    "hook_secret_create": (
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (user_id) DO NOTHING"
    ),
    "hook_secret_replace": (
        "INSERT INTO webhook_secrets (user_id, secret, created_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (user_id) DO UPDATE SET secret = excluded.secret, "
        "created_at = excluded.created_at"
    ),
    "hook_secret_delete": "DELETE FROM webhook_secrets WHERE user_id = $1",
    "delivery_insert": (
        f"INSERT INTO webhook_deliveries ({DELIVERY_COLS}) VALUES ("
        "$1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10, $11, $12) "
        "ON CONFLICT (delivery_id) DO NOTHING"
    ),
    "delivery_by_id": f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE delivery_id = $1",
    "delivery_by_id_for_user": (
        f"SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE delivery_id = $1 AND user_id = $2"
    ),
    "delivery_update": (
        "UPDATE webhook_deliveries SET status = $2, attempts = $3, updated_at = $4, "
        "next_attempt_at = $5 WHERE delivery_id = $1"
    ),
    "deliveries_due": (
        f"SELECT {DELIVERY_COLS} FROM webhook_deliveries "
        "WHERE status = 'pending' AND next_attempt_at < $1 "
        "ORDER BY next_attempt_at ASC, id ASC LIMIT $2"
    ),
    "deliveries_delete_for_user": "DELETE FROM webhook_deliveries WHERE user_id = $1",
    "attempt_insert": (
        f"INSERT INTO webhook_attempts ({ATTEMPT_COLS}) VALUES ({_marks(len(_ATTEMPT))})"
    ),
    "attempts_for_hook": (
        f"SELECT {ATTEMPT_COLS} FROM webhook_attempts WHERE webhook_id = $1 AND user_id = $2 "
        "ORDER BY created_at DESC, id DESC LIMIT $3"
    ),
    "attempts_delete_for_user": "DELETE FROM webhook_attempts WHERE user_id = $1",
}


def _json(value: Any) -> Any:
    return value if isinstance(value, list | dict) else json.loads(value)


class Webhooks(_Repository):
    def _hook(self, row: Row) -> WebhookEndpoint:
        values = self._times(row, _HOOK_TIMES)
        values[_HOOK_EVENTS] = _json(values[_HOOK_EVENTS])
        values[_HOOK_ENABLED] = bool(values[_HOOK_ENABLED])
        return WebhookEndpoint(*values)

    def _delivery(self, row: Row) -> WebhookDelivery:
        values = self._times(row, _DELIVERY_TIMES)
        values[_PAYLOAD] = _json(values[_PAYLOAD])
        return WebhookDelivery(*values)

    def _attempt(self, row: Row) -> WebhookAttempt:
        return WebhookAttempt(*self._times(row, _ATTEMPT_TIMES))

    async def create(self, endpoint: WebhookEndpoint, *, max_per_user: int) -> bool:
        ts = self._db.ts
        args = (
            endpoint.webhook_id, endpoint.user_id, endpoint.url, json.dumps(endpoint.events),
            endpoint.description, endpoint.secret, endpoint.enabled, ts(endpoint.created_at),
            ts(endpoint.updated_at), ts(endpoint.failing_since), max_per_user,
        )  # fmt: skip
        return await self._db.changes(self._sql["hook_insert"], args) == 1

    async def get(self, webhook_id: str) -> WebhookEndpoint | None:
        row = await self._db.one(self._sql["hook_by_id"], (webhook_id,))
        return self._hook(row) if row else None

    async def get_for_user(self, webhook_id: str, user_id: str) -> WebhookEndpoint | None:
        row = await self._db.one(self._sql["hook_by_id_for_user"], (webhook_id, user_id))
        return self._hook(row) if row else None

    async def list_for_user(self, user_id: str, *, limit: int) -> list[WebhookEndpoint]:
        args = (user_id, self._limit(limit))
        return [self._hook(r) for r in await self._db.all(self._sql["hooks_for_user"], args)]

    async def update(
        self,
        webhook_id: str,
        user_id: str,
        *,
        at: datetime,
        url: str | None = None,
        events: list[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpoint | None:
        args = (
            webhook_id, user_id, url, None if events is None else json.dumps(events),
            description, enabled, self._db.ts(at),
        )  # fmt: skip
        row = await self._db.one(self._sql["hook_update"], args)
        return self._hook(row) if row else None

    async def delete(self, webhook_id: str, user_id: str) -> bool:
        return await self._db.changes(self._sql["hook_delete"], (webhook_id, user_id)) == 1

    async def record_outcome(
        self, webhook_id: str, *, ok: bool, at: datetime
    ) -> WebhookEndpoint | None:
        if ok:
            await self._db.changes(self._sql["hook_succeeded"], (webhook_id,))
        else:
            await self._db.changes(self._sql["hook_failed"], (webhook_id, self._db.ts(at)))
        return await self.get(webhook_id)

    async def disable(self, webhook_id: str, *, at: datetime) -> bool:
        args = (webhook_id, self._db.ts(at))
        return await self._db.changes(self._sql["hook_disable"], args) == 1

    async def get_secret(self, user_id: str) -> str | None:
        row = await self._db.one(self._sql["hook_secret"], (user_id,))
        return str(row[0]) if row else None

    async def create_secret(self, user_id: str, secret: str, *, at: datetime) -> bool:
        args = (user_id, secret, self._db.ts(at))
        return await self._db.changes(self._sql["hook_secret_create"], args) == 1

    async def replace_secret(self, user_id: str, secret: str, *, at: datetime) -> None:
        await self._db.changes(self._sql["hook_secret_replace"], (user_id, secret, self._db.ts(at)))

    async def create_delivery(self, delivery: WebhookDelivery) -> bool:
        ts = self._db.ts
        args = (
            delivery.delivery_id, delivery.user_id, delivery.webhook_id, delivery.url,
            delivery.event, json.dumps(delivery.payload), delivery.status, delivery.attempts,
            ts(delivery.created_at), ts(delivery.updated_at), delivery.message_id,
            ts(delivery.next_attempt_at),
        )  # fmt: skip
        return await self._db.changes(self._sql["delivery_insert"], args) == 1

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        row = await self._db.one(self._sql["delivery_by_id"], (delivery_id,))
        return self._delivery(row) if row else None

    async def get_delivery_for_user(self, delivery_id: str, user_id: str) -> WebhookDelivery | None:
        row = await self._db.one(self._sql["delivery_by_id_for_user"], (delivery_id, user_id))
        return self._delivery(row) if row else None

    async def update_delivery(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        at: datetime,
        next_attempt_at: datetime | None,
    ) -> None:
        ts = self._db.ts
        args = (delivery_id, status, attempts, ts(at), ts(next_attempt_at))
        await self._db.changes(self._sql["delivery_update"], args)

    async def list_due_deliveries(self, before: datetime, *, limit: int) -> list[WebhookDelivery]:
        args = (self._db.ts(before), self._limit(limit))
        return [self._delivery(r) for r in await self._db.all(self._sql["deliveries_due"], args)]

    async def add_attempt(self, attempt: WebhookAttempt) -> None:
        ts = self._db.ts
        args = (
            attempt.attempt_id, attempt.delivery_id, attempt.user_id, attempt.webhook_id,
            attempt.event, attempt.attempt, attempt.status, ts(attempt.created_at),
            attempt.response_code, attempt.response_body, attempt.duration_ms, attempt.error,
            ts(attempt.next_attempt_at),
        )  # fmt: skip
        await self._db.changes(self._sql["attempt_insert"], args)

    async def list_attempts(
        self, webhook_id: str, user_id: str, *, limit: int
    ) -> list[WebhookAttempt]:
        args = (webhook_id, user_id, self._limit(limit))
        return [self._attempt(r) for r in await self._db.all(self._sql["attempts_for_hook"], args)]

    async def delete_for_user(self, user_id: str) -> int:
        owned = ("hook_secret_delete", "deliveries_delete_for_user", "attempts_delete_for_user")
        for name in owned:
            await self._db.changes(self._sql[name], (user_id,))
        return await self._db.changes(self._sql["hooks_delete_for_user"], (user_id,))
