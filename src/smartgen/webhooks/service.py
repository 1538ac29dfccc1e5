"""Webhook endpoints, the default secret, and `announce`: the one way an event becomes
deliveries. Owner-scoped: another user's endpoint or delivery is indistinguishable from a
missing one (404).

`announce` writes one delivery per receiving URL and queues its first attempt; it never
sends. The worker's delivery task (`tasks.py`) sends, records each attempt and schedules
the retries. A delivery's id is derived from `event_key` when the caller has one (a job's
event names the job and the time of its change), so an event announced twice (a
redelivered queue message) is still one delivery, with one `webhook-id`."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Any, Final

from smartgen.config import Settings
from smartgen.errors import AppError, Conflict, NotFound, TooManyRequests, ValidationFailed
from smartgen.kit.outbound import Resolver, UrlRefused, check_url, system_resolver
from smartgen.kit.times import utcnow
from smartgen.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from smartgen.ports import WebhookQueue
from smartgen.store.base import Store
from smartgen.webhooks.signing import new_secret

log = logging.getLogger("smartgen.webhooks")
NOT_FOUND: Final = "Webhook not found"
PING: Final = "ping"
# Delivery ids derived from an event's key: uuid5 in this namespace.
_DELIVERY_IDS: Final = uuid.UUID("4b2f7a52-3f1e-4c55-9d0a-2f6f0c1d8e71")
ATTEMPTS_SHOWN: Final = 100


async def checked_url(
    url: str, *, settings: Settings, field: str = "url", resolve: Resolver = system_resolver
) -> str:
    """The URL, when webhooks may call it now (the SSRF rules, `kit/outbound.py`); else
    422 `webhook_url_refused` naming why."""
    try:
        checked = await check_url(
            url,
            allow_http=settings.webhook_allow_http,
            allow_private=settings.webhook_allow_private_networks,
            resolve=resolve,
        )
    except UrlRefused as refused:
        raise ValidationFailed(
            f"{field}: {refused.reason}",
            code="webhook_url_refused",
            details=[{"field": field, "message": refused.reason}],
        ) from None
    return checked.url


def parse_webhook_id(webhook_id: str) -> str:
    try:
        return str(uuid.UUID(webhook_id))
    except (ValueError, AttributeError):
        raise NotFound(NOT_FOUND, code="webhook_not_found") from None


async def create_webhook(
    *,
    store: Store,
    settings: Settings,
    user_id: str,
    url: str,
    events: list[str],
    description: str,
    queue: WebhookQueue | None = None,
    resolve: Resolver = system_resolver,
) -> WebhookEndpoint:
    """A new endpoint with its own signing secret (the answer shows it this once)."""
    url = await checked_url(url, settings=settings, resolve=resolve)
    now = utcnow()
    endpoint = WebhookEndpoint(
        webhook_id=str(uuid.uuid4()),
        user_id=user_id,
        url=url,
        events=events,
        description=description,
        secret=new_secret(),
        enabled=True,
        created_at=now,
        updated_at=now,
    )
    cap = settings.webhook_max_per_user
    if not await store.webhooks.create(endpoint, max_per_user=cap):
        raise TooManyRequests(
            f"You have {cap} webhooks (at most {cap}); delete one first",
            code="too_many_webhooks",
        )
    await endpoints_changed(queue, user_id)
    return endpoint


async def list_webhooks(*, store: Store, settings: Settings, user_id: str) -> list[WebhookEndpoint]:
    return await store.webhooks.list_for_user(user_id, limit=settings.webhook_max_per_user)


async def get_webhook(*, store: Store, user_id: str, webhook_id: str) -> WebhookEndpoint:
    found = await store.webhooks.get_for_user(parse_webhook_id(webhook_id), user_id)
    if found is None:
        raise NotFound(NOT_FOUND, code="webhook_not_found")
    return found


async def update_webhook(
    *,
    store: Store,
    settings: Settings,
    user_id: str,
    webhook_id: str,
    url: str | None = None,
    events: list[str] | None = None,
    description: str | None = None,
    enabled: bool | None = None,
    queue: WebhookQueue | None = None,
    resolve: Resolver = system_resolver,
) -> WebhookEndpoint:
    webhook_id = parse_webhook_id(webhook_id)
    await get_webhook(store=store, user_id=user_id, webhook_id=webhook_id)  # 404 first
    if url is not None:
        url = await checked_url(url, settings=settings, resolve=resolve)
    changed = await store.webhooks.update(
        webhook_id,
        user_id,
        at=utcnow(),
        url=url,
        events=events,
        description=description,
        enabled=enabled,
    )
    if changed is None:
        raise NotFound(NOT_FOUND, code="webhook_not_found")
    await endpoints_changed(queue, user_id)
    return changed


async def delete_webhook(
    *, store: Store, user_id: str, webhook_id: str, queue: WebhookQueue | None = None
) -> None:
    if not await store.webhooks.delete(parse_webhook_id(webhook_id), user_id):
        raise NotFound(NOT_FOUND, code="webhook_not_found")
    await endpoints_changed(queue, user_id)


async def endpoints_changed(queue: WebhookQueue | None, user_id: str) -> None:
    """After a write of the user's endpoints, before its request returns: workers that
    remember them read them again at the next job's end (`endpoints.CachedEndpoints`).
    Should Redis not answer, they do so within the cache's max age."""
    if queue is None:
        return
    try:
        await queue.endpoints_changed(user_id)
    except Exception as exc:
        log.warning("webhook change of user %s not recorded: %s", user_id, type(exc).__name__)


async def reveal_secret(*, store: Store, user_id: str) -> str:
    """The user's default secret (for jobs' own `webhookUrl`), made on the first call and
    shown by it only; 409 afterwards (rotate to get a new one)."""
    secret = new_secret()
    if not await store.webhooks.create_secret(user_id, secret, at=utcnow()):
        raise Conflict(
            "Your default webhook secret was already revealed; rotate it to get a new one "
            "(POST /webhooks/secret/rotate)",
            code="webhook_secret_revealed",
        )
    return secret


async def rotate_secret(*, store: Store, user_id: str) -> str:
    """A new default secret, shown this once; deliveries are signed with it from now on."""
    secret = new_secret()
    await store.webhooks.replace_secret(user_id, secret, at=utcnow())
    return secret


async def announce(
    event_type: str,
    user_id: str,
    data: dict[str, Any],
    *,
    store: Store,
    queue: WebhookQueue,
    job_webhook_url: str | None = None,
    event_key: str | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> list[WebhookDelivery]:
    """Deliver `{type, timestamp, data}` to each enabled endpoint of the user's that
    subscribed to `event_type`, and to `job_webhook_url`: the deliveries are written,
    then their first attempts queued (a queue that does not answer leaves them due: the
    worker's sweep queues them). Returns the deliveries this call created. `endpoints`:
    the user's endpoints when the caller has read them already (else read here)."""
    if endpoints is None:
        endpoints = await store.webhooks.list_for_user(user_id, limit=1000)
    return [
        delivery
        for webhook_id, url in targets(endpoints, event_type, job_webhook_url)
        if (
            delivery := await _deliver(
                store, queue, event_type, user_id, data, webhook_id, url, event_key
            )
        )
        is not None
    ]


def targets(
    endpoints: list[WebhookEndpoint], event_type: str, job_webhook_url: str | None
) -> list[tuple[str | None, str]]:
    """(webhook id or None, URL) of each receiver of `event_type`."""
    found: list[tuple[str | None, str]] = [
        (e.webhook_id, e.url) for e in endpoints if e.enabled and event_type in e.events
    ]
    if job_webhook_url:
        found.append((None, job_webhook_url))
    return found


def delivery_id_of(event_key: str, receiver: str) -> str:
    """The delivery of the event `event_key` to `receiver` (a webhook's id, or the job's
    own URL): the same id however often the event is announced."""
    return str(uuid.uuid5(_DELIVERY_IDS, f"{event_key}|{receiver}"))


async def _deliver(
    store: Store,
    queue: WebhookQueue,
    event_type: str,
    user_id: str,
    data: dict[str, Any],
    webhook_id: str | None,
    url: str,
    event_key: str | None,
) -> WebhookDelivery | None:
    if event_key is not None:
        delivery_id = delivery_id_of(event_key, webhook_id or url)
    else:
        delivery_id = str(uuid.uuid4())
    now = utcnow()
    delivery = WebhookDelivery(
        delivery_id=delivery_id,
        user_id=user_id,
        webhook_id=webhook_id,
        url=url,
        event=event_type,
        payload=data,
        status="pending",
        attempts=0,
        created_at=now,
        updated_at=now,
        message_id="msg_" + uuid.UUID(delivery_id).hex,
        next_attempt_at=now,
    )
    if not await store.webhooks.create_delivery(delivery):
        return None  # announced before: that delivery goes on
    try:
        await queue.enqueue_delivery(delivery_id, attempt=1, delay_ms=0)
    except AppError:
        log.warning("webhook delivery %s written but not queued (the sweep will)", delivery_id)
    return delivery


async def send_test(
    *, store: Store, queue: WebhookQueue, user_id: str, webhook_id: str
) -> WebhookDelivery:
    """A `ping` event to this endpoint alone, whatever it subscribed to."""
    endpoint = await get_webhook(store=store, user_id=user_id, webhook_id=webhook_id)
    delivery = await _deliver(
        store, queue, PING, user_id, {"webhookId": endpoint.webhook_id},
        endpoint.webhook_id, endpoint.url, None,
    )  # fmt: skip
    assert delivery is not None  # a fresh id
    return delivery


async def list_attempts(
    *, store: Store, user_id: str, webhook_id: str, limit: int = ATTEMPTS_SHOWN
) -> list[WebhookAttempt]:
    endpoint = await get_webhook(store=store, user_id=user_id, webhook_id=webhook_id)
    return await store.webhooks.list_attempts(endpoint.webhook_id, user_id, limit=limit)


async def redeliver(
    *, store: Store, queue: WebhookQueue, user_id: str, webhook_id: str, delivery_id: str
) -> WebhookDelivery:
    """Send a delivery of this endpoint's again now (same `webhook-id`), whatever became
    of it; its next attempt counts on from the last."""
    endpoint = await get_webhook(store=store, user_id=user_id, webhook_id=webhook_id)
    try:
        delivery_id = str(uuid.UUID(delivery_id))
    except (ValueError, AttributeError):
        delivery_id = ""
    delivery = await store.webhooks.get_delivery_for_user(delivery_id, user_id)
    if delivery is None or delivery.webhook_id != endpoint.webhook_id:
        raise NotFound("Delivery not found", code="delivery_not_found")
    now = utcnow()
    await store.webhooks.update_delivery(
        delivery_id, status="pending", attempts=delivery.attempts, at=now, next_attempt_at=now
    )
    await queue.enqueue_delivery(delivery_id, attempt=delivery.attempts + 1, delay_ms=0, again=True)
    return replace(delivery, status="pending", updated_at=now, next_attempt_at=now)
