"""The worker's side of webhooks: one attempt of a delivery per queue message, and the
sweep that queues deliveries whose attempt is overdue (a queue that did not answer when
they were announced or rescheduled).

An attempt loads the delivery by id and skips it unless it is pending and this attempt is
the next one (a message delivered twice, or one made stale by a redelivery, does nothing).
It signs the body with the endpoint's secret (the user's default secret for a job's own
`webhookUrl`), sends it (`sender.py`: the SSRF check again, the checked address, no
redirects, WEBHOOK_TIMEOUT_SECONDS), records the attempt, and then either marks the
delivery succeeded (any 2xx) or schedules the next attempt after the next delay of
WEBHOOK_RETRY_DELAYS_SECONDS, or gives up when the schedule is spent. An endpoint whose
deliveries have failed without a success for WEBHOOK_DISABLE_AFTER_DAYS is disabled and
its owner gets a `webhook_disabled` event. A crash mid-attempt lets the queue run the
message again: at least once, with the same `webhook-id`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from smartgen.config import Settings
from smartgen.errors import AppError
from smartgen.kit import jsoncodec
from smartgen.kit.times import iso_ms, utcnow
from smartgen.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from smartgen.ports import Delivery, Notifier, WebhookQueue
from smartgen.store.base import Store
from smartgen.webhooks import service
from smartgen.webhooks.signing import signed_headers

log = logging.getLogger("smartgen.webhooks")
SWEEP_SECONDS = 30.0
SWEEP_LIMIT = 500


@dataclass(frozen=True, slots=True)
class Answer:
    """What an attempt got: the status and the start of the body, or why it got none."""

    status_code: int | None
    body: str | None
    duration_ms: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender(Protocol):
    async def send(self, url: str, headers: dict[str, str], body: bytes) -> Answer:
        """POST `body` (never raises for the receiver's failures: they are the answer)."""


def body_of(delivery: WebhookDelivery) -> bytes:
    """The JSON body: the same bytes for every attempt of a delivery."""
    event = {
        "type": delivery.event,
        "timestamp": iso_ms(delivery.created_at),
        "data": delivery.payload,
    }
    return jsoncodec.dumps(event).encode()


class WebhookTask:
    def __init__(
        self,
        *,
        store: Store,
        sender: Sender,
        queue: WebhookQueue,
        notifier: Notifier,
        settings: Settings,
    ) -> None:
        self.store = store
        self.sender = sender
        self.queue = queue
        self.notifier = notifier
        self.settings = settings

    async def __call__(self, message: Delivery) -> str:
        return await self.attempt(
            str(message.data.get("deliveryId") or ""), int(message.data.get("attempt") or 1)
        )

    async def attempt(self, delivery_id: str, attempt: int) -> str:
        delivery = await self.store.webhooks.get_delivery(delivery_id)
        if delivery is None or delivery.status != "pending" or delivery.attempts >= attempt:
            return "nothing to do"
        endpoint: WebhookEndpoint | None = None
        if delivery.webhook_id is not None:
            endpoint = await self.store.webhooks.get(delivery.webhook_id)
            if endpoint is None or not endpoint.enabled:
                why = "the endpoint was deleted" if endpoint is None else "the endpoint is disabled"
                await self._give_up(delivery, why)
                return why
            secret: str | None = endpoint.secret
            url = endpoint.url
        else:
            secret = await self.store.webhooks.get_secret(delivery.user_id)
            url = delivery.url
        if secret is None:
            await self._give_up(delivery, "no signing secret")
            return "no signing secret"
        body = body_of(delivery)
        sent_at = utcnow()
        headers = signed_headers(secret, delivery.message_id, int(sent_at.timestamp()), body)
        answer = await self.sender.send(url, headers, body)
        number = delivery.attempts + 1
        now = utcnow()
        next_at = None if answer.ok else self._next_attempt(number, now)
        await self.store.webhooks.add_attempt(
            WebhookAttempt(
                attempt_id=str(uuid.uuid4()),
                delivery_id=delivery.delivery_id,
                user_id=delivery.user_id,
                webhook_id=delivery.webhook_id,
                event=delivery.event,
                attempt=number,
                status="succeeded" if answer.ok else "failed",
                created_at=sent_at,
                response_code=answer.status_code,
                response_body=answer.body,
                duration_ms=answer.duration_ms,
                error=answer.error,
                next_attempt_at=next_at,
            )
        )
        status = "succeeded" if answer.ok else ("pending" if next_at else "failed")
        await self.store.webhooks.update_delivery(
            delivery.delivery_id, status=status, attempts=number, at=now, next_attempt_at=next_at
        )
        if endpoint is not None:
            await self._judge(endpoint, ok=answer.ok, at=now)
        if next_at is not None:
            delay_ms = max(0, round((next_at - now).total_seconds() * 1000))
            await self.queue.enqueue_delivery(
                delivery.delivery_id, attempt=number + 1, delay_ms=delay_ms
            )
        return status

    def _next_attempt(self, number: int, now: datetime) -> datetime | None:
        delays = self.settings.webhook_retry_delays_seconds
        if number > len(delays):
            return None
        return now + timedelta(seconds=delays[number - 1])

    async def _give_up(self, delivery: WebhookDelivery, why: str) -> None:
        log.info("webhook delivery %s given up: %s", delivery.delivery_id, why)
        await self.store.webhooks.update_delivery(
            delivery.delivery_id,
            status="failed",
            attempts=delivery.attempts,
            at=utcnow(),
            next_attempt_at=None,
        )

    async def _judge(self, endpoint: WebhookEndpoint, *, ok: bool, at: datetime) -> None:
        """Track the endpoint's run of failures; disable it (once) when it has lasted
        WEBHOOK_DISABLE_AFTER_DAYS, and tell its owner."""
        current = await self.store.webhooks.record_outcome(endpoint.webhook_id, ok=ok, at=at)
        if ok or current is None or not current.enabled or current.failing_since is None:
            return
        limit = timedelta(days=self.settings.webhook_disable_after_days)
        if at - current.failing_since < limit:
            return
        if await self.store.webhooks.disable(endpoint.webhook_id, at=at):
            await service.endpoints_changed(self.queue, endpoint.user_id)
            log.warning("webhook %s disabled: failing since %s", endpoint.webhook_id,
                        iso_ms(current.failing_since))  # fmt: skip
            await self.notifier.user_event(
                endpoint.user_id,
                "webhook_disabled",
                {
                    "webhookId": endpoint.webhook_id,
                    "url": endpoint.url,
                    "failingSince": iso_ms(current.failing_since),
                    "disabledAt": iso_ms(at),
                },
            )

    async def sweep(self, *, grace_seconds: float = SWEEP_SECONDS) -> int:
        """Queue each pending delivery whose attempt is overdue by more than the grace
        (its message was never queued); how many."""
        before = utcnow() - timedelta(seconds=grace_seconds)
        due = await self.store.webhooks.list_due_deliveries(before, limit=SWEEP_LIMIT)
        for delivery in due:
            await self.queue.enqueue_delivery(
                delivery.delivery_id, attempt=delivery.attempts + 1, delay_ms=0
            )
        return len(due)

    async def sweep_forever(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.sweep()
            except AppError as exc:
                log.warning("webhook sweep: %s", exc)
            except Exception:
                log.exception("webhook sweep failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SWEEP_SECONDS)
