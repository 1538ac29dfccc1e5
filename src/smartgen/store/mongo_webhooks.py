"""Webhooks on MongoDB: collections `webhooks`, `webhook_secrets`, `webhook_deliveries` and
`webhook_attempts`, beside `mongo.py`, which builds the repository with the others and
creates its indexes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from smartgen.kit.times import as_utc
from smartgen.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from smartgen.store.unavailable import translate_unavailable

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))
NEWEST = [("createdAt", DESCENDING), ("_id", DESCENDING)]


def _dt(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _endpoint(doc: dict[str, Any]) -> WebhookEndpoint:
    return WebhookEndpoint(
        webhook_id=doc["webhookId"],
        user_id=str(doc["userId"]),
        url=doc["url"],
        events=list(doc.get("events") or []),
        description=doc.get("description") or "",
        secret=doc["secret"],
        enabled=bool(doc.get("enabled")),
        created_at=as_utc(doc["createdAt"]),
        updated_at=as_utc(doc.get("updatedAt") or doc["createdAt"]),
        failing_since=_dt(doc.get("failingSince")),
    )


def _delivery(doc: dict[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        delivery_id=doc["deliveryId"],
        user_id=str(doc["userId"]),
        webhook_id=doc.get("webhookId"),
        url=doc["url"],
        event=doc["event"],
        payload=dict(doc.get("payload") or {}),
        status=doc["status"],
        attempts=int(doc.get("attempts") or 0),
        created_at=as_utc(doc["createdAt"]),
        updated_at=as_utc(doc.get("updatedAt") or doc["createdAt"]),
        message_id=doc["messageId"],
        next_attempt_at=_dt(doc.get("nextAttemptAt")),
    )


def _attempt(doc: dict[str, Any]) -> WebhookAttempt:
    return WebhookAttempt(
        attempt_id=doc["attemptId"],
        delivery_id=doc["deliveryId"],
        user_id=str(doc["userId"]),
        webhook_id=doc.get("webhookId"),
        event=doc["event"],
        attempt=int(doc["attempt"]),
        status=doc["status"],
        created_at=as_utc(doc["createdAt"]),
        response_code=doc.get("responseCode"),
        response_body=doc.get("responseBody"),
        duration_ms=doc.get("durationMs"),
        error=doc.get("error"),
        next_attempt_at=_dt(doc.get("nextAttemptAt")),
    )


class MongoWebhooks:
    def __init__(self, db: Any) -> None:
        self._c = db["webhooks"]
        self._secrets = db["webhook_secrets"]
        self._deliveries = db["webhook_deliveries"]
        self._attempts = db["webhook_attempts"]

    @staticmethod
    async def create_indexes(db: Any) -> None:
        await db["webhooks"].create_index("webhookId", unique=True)
        await db["webhooks"].create_index([("userId", ASCENDING), ("createdAt", DESCENDING)])
        await db["webhook_secrets"].create_index("userId", unique=True)
        await db["webhook_deliveries"].create_index("deliveryId", unique=True)
        await db["webhook_deliveries"].create_index(
            [("status", ASCENDING), ("nextAttemptAt", ASCENDING)]
        )
        await db["webhook_deliveries"].create_index("userId")
        await db["webhook_attempts"].create_index(
            [("webhookId", ASCENDING), ("createdAt", DESCENDING)]
        )
        await db["webhook_attempts"].create_index("userId")

    # --- endpoints --------------------------------------------------------------------
    @_unavailable
    async def create(self, endpoint: WebhookEndpoint, *, max_per_user: int) -> bool:
        # Two round trips, as jobs' cap: concurrent creations may overshoot slightly.
        if await self._c.count_documents({"userId": endpoint.user_id}) >= max_per_user:
            return False
        await self._c.insert_one(
            {
                "webhookId": endpoint.webhook_id,
                "userId": endpoint.user_id,
                "url": endpoint.url,
                "events": endpoint.events,
                "description": endpoint.description,
                "secret": endpoint.secret,
                "enabled": endpoint.enabled,
                "createdAt": endpoint.created_at,
                "updatedAt": endpoint.updated_at,
                "failingSince": endpoint.failing_since,
            }
        )
        return True

    @_unavailable
    async def get(self, webhook_id: str) -> WebhookEndpoint | None:
        doc = await self._c.find_one({"webhookId": webhook_id})
        return _endpoint(doc) if doc else None

    @_unavailable
    async def get_for_user(self, webhook_id: str, user_id: str) -> WebhookEndpoint | None:
        doc = await self._c.find_one({"webhookId": webhook_id, "userId": user_id})
        return _endpoint(doc) if doc else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[WebhookEndpoint]:
        cursor = self._c.find({"userId": user_id}).sort(NEWEST).limit(limit)
        return [_endpoint(d) async for d in cursor]

    @_unavailable
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
        changes: dict[str, Any] = {"updatedAt": at}
        for key, value in (
            ("url", url), ("events", events), ("description", description), ("enabled", enabled)
        ):  # fmt: skip
            if value is not None:
                changes[key] = value
        if enabled:
            changes["failingSince"] = None
        query = {"webhookId": webhook_id, "userId": user_id}
        if (await self._c.update_one(query, {"$set": changes})).matched_count == 0:
            return None
        return await self.get_for_user(webhook_id, user_id)

    @_unavailable
    async def delete(self, webhook_id: str, user_id: str) -> bool:
        result = await self._c.delete_one({"webhookId": webhook_id, "userId": user_id})
        return bool(result.deleted_count == 1)

    @_unavailable
    async def record_outcome(
        self, webhook_id: str, *, ok: bool, at: datetime
    ) -> WebhookEndpoint | None:
        if ok:
            await self._c.update_one({"webhookId": webhook_id}, {"$set": {"failingSince": None}})
        else:
            await self._c.update_one(
                {"webhookId": webhook_id, "failingSince": None},  # None also matches missing
                {"$set": {"failingSince": at}},
            )
        return await self.get(webhook_id)

    @_unavailable
    async def disable(self, webhook_id: str, *, at: datetime) -> bool:
        result = await self._c.update_one(
            {"webhookId": webhook_id, "enabled": True},
            {"$set": {"enabled": False, "updatedAt": at}},
        )
        return bool(result.matched_count == 1)

    # --- the default secret -----------------------------------------------------------
    @_unavailable
    async def get_secret(self, user_id: str) -> str | None:
        doc = await self._secrets.find_one({"userId": user_id})
        return str(doc["secret"]) if doc else None

    @_unavailable
    async def create_secret(self, user_id: str, secret: str, *, at: datetime) -> bool:
        try:
            await self._secrets.insert_one({"userId": user_id, "secret": secret, "createdAt": at})
        except DuplicateKeyError:
            return False
        return True

    @_unavailable
    async def replace_secret(self, user_id: str, secret: str, *, at: datetime) -> None:
        await self._secrets.update_one(
            {"userId": user_id}, {"$set": {"secret": secret, "createdAt": at}}, upsert=True
        )

    # --- deliveries and attempts -------------------------------------------------------
    @_unavailable
    async def create_delivery(self, delivery: WebhookDelivery) -> bool:
        try:
            await self._deliveries.insert_one(
                {
                    "deliveryId": delivery.delivery_id,
                    "userId": delivery.user_id,
                    "webhookId": delivery.webhook_id,
                    "url": delivery.url,
                    "event": delivery.event,
                    "payload": delivery.payload,
                    "status": delivery.status,
                    "attempts": delivery.attempts,
                    "createdAt": delivery.created_at,
                    "updatedAt": delivery.updated_at,
                    "messageId": delivery.message_id,
                    "nextAttemptAt": delivery.next_attempt_at,
                }
            )
        except DuplicateKeyError:
            return False
        return True

    @_unavailable
    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None:
        doc = await self._deliveries.find_one({"deliveryId": delivery_id})
        return _delivery(doc) if doc else None

    @_unavailable
    async def get_delivery_for_user(self, delivery_id: str, user_id: str) -> WebhookDelivery | None:
        doc = await self._deliveries.find_one({"deliveryId": delivery_id, "userId": user_id})
        return _delivery(doc) if doc else None

    @_unavailable
    async def update_delivery(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        at: datetime,
        next_attempt_at: datetime | None,
    ) -> None:
        await self._deliveries.update_one(
            {"deliveryId": delivery_id},
            {
                "$set": {
                    "status": status,
                    "attempts": attempts,
                    "updatedAt": at,
                    "nextAttemptAt": next_attempt_at,
                }
            },
        )

    @_unavailable
    async def list_due_deliveries(self, before: datetime, *, limit: int) -> list[WebhookDelivery]:
        cursor = self._deliveries.find(
            {"status": "pending", "nextAttemptAt": {"$lt": before}}
        ).sort([("nextAttemptAt", ASCENDING), ("_id", ASCENDING)])
        return [_delivery(d) async for d in cursor.limit(limit)]

    @_unavailable
    async def add_attempt(self, attempt: WebhookAttempt) -> None:
        await self._attempts.insert_one(
            {
                "attemptId": attempt.attempt_id,
                "deliveryId": attempt.delivery_id,
                "userId": attempt.user_id,
                "webhookId": attempt.webhook_id,
                "event": attempt.event,
                "attempt": attempt.attempt,
                "status": attempt.status,
                "createdAt": attempt.created_at,
                "responseCode": attempt.response_code,
                "responseBody": attempt.response_body,
                "durationMs": attempt.duration_ms,
                "error": attempt.error,
                "nextAttemptAt": attempt.next_attempt_at,
            }
        )

    @_unavailable
    async def list_attempts(
        self, webhook_id: str, user_id: str, *, limit: int
    ) -> list[WebhookAttempt]:
        cursor = self._attempts.find({"webhookId": webhook_id, "userId": user_id})
        return [_attempt(d) async for d in cursor.sort(NEWEST).limit(limit)]

    @_unavailable
    async def delete_for_user(self, user_id: str) -> int:
        await self._secrets.delete_many({"userId": user_id})
        await self._deliveries.delete_many({"userId": user_id})
        await self._attempts.delete_many({"userId": user_id})
        return int((await self._c.delete_many({"userId": user_id})).deleted_count)
