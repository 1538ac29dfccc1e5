"""/webhooks: endpoints that receive signed events, the default secret for jobs' own
`webhookUrl`, and each endpoint's delivery log."""

from __future__ import annotations

from uuid import UUID

from fastapi import APIRouter, Response, status

from smartgen.api.deps import SettingsDep, StoreDep, WebhookQueueDep, WebhooksUser, rate_limit
from smartgen.errors import error_responses
from smartgen.webhooks import service
from smartgen.webhooks.schemas import (
    AttemptOut,
    DeliveryQueued,
    SecretOut,
    WebhookCreate,
    WebhookCreated,
    WebhookOut,
    WebhookUpdate,
    attempt_out,
    webhook_created,
    webhook_out,
)

# Ids are UUIDs in the paths: `/webhooks/secret` is then no webhook's path (nor its
# `Allow` header that of one).
router = APIRouter(
    prefix="/webhooks", tags=["webhooks"], responses=error_responses(401, 403, 429, 503)
)
# Writes and test sends: as many as saves allow, per user.
write_limit = rate_limit(
    "webhooks",
    lambda s: (s.save_rate_limit, s.save_rate_window_seconds),
    per="user",
    fail_open=True,
)
WRITES = error_responses(400, 404, 413, 415, 422)


@router.post("", status_code=status.HTTP_201_CREATED, responses=WRITES, dependencies=[write_limit])
async def create_webhook(
    body: WebhookCreate,
    user: WebhooksUser,
    store: StoreDep,
    settings: SettingsDep,
    queue: WebhookQueueDep,
) -> WebhookCreated:
    """Register a URL for some events; its signing secret (`whsec_…`) is in this answer
    only."""
    endpoint = await service.create_webhook(
        store=store,
        settings=settings,
        user_id=user.user_id,
        url=body.url,
        events=list(body.events),
        description=body.description,
        queue=queue,
    )
    return webhook_created(endpoint)


@router.get("")
async def list_webhooks(
    user: WebhooksUser, store: StoreDep, settings: SettingsDep
) -> list[WebhookOut]:
    """The caller's webhooks, newest first (without their secrets)."""
    found = await service.list_webhooks(store=store, settings=settings, user_id=user.user_id)
    return [webhook_out(e) for e in found]


@router.get("/secret", responses=error_responses(409), dependencies=[write_limit])
async def reveal_secret(user: WebhooksUser, store: StoreDep) -> SecretOut:
    """Your default signing secret, for jobs' own `webhookUrl`: made and shown by the
    first call only (409 afterwards: rotate it)."""
    return SecretOut(secret=await service.reveal_secret(store=store, user_id=user.user_id))


@router.post("/secret/rotate", dependencies=[write_limit])
async def rotate_secret(user: WebhooksUser, store: StoreDep) -> SecretOut:
    """A new default signing secret, shown this once; the old one stops signing now."""
    return SecretOut(secret=await service.rotate_secret(store=store, user_id=user.user_id))


@router.get("/{webhookId:uuid}", responses=error_responses(404))
async def get_webhook(webhookId: UUID, user: WebhooksUser, store: StoreDep) -> WebhookOut:
    """One of the caller's webhooks."""
    endpoint = await service.get_webhook(
        store=store, user_id=user.user_id, webhook_id=str(webhookId)
    )
    return webhook_out(endpoint)


@router.patch("/{webhookId:uuid}", responses=WRITES, dependencies=[write_limit])
async def update_webhook(
    webhookId: UUID,
    body: WebhookUpdate,
    user: WebhooksUser,
    store: StoreDep,
    settings: SettingsDep,
    queue: WebhookQueueDep,
) -> WebhookOut:
    """Change a webhook's URL, events, description, or pause (`enabled: false`) and
    resume it."""
    endpoint = await service.update_webhook(
        store=store,
        settings=settings,
        user_id=user.user_id,
        webhook_id=str(webhookId),
        url=body.url,
        events=None if body.events is None else list(body.events),
        description=body.description,
        enabled=body.enabled,
        queue=queue,
    )
    return webhook_out(endpoint)


@router.delete(
    "/{webhookId:uuid}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404)
)
async def delete_webhook(
    webhookId: UUID, user: WebhooksUser, store: StoreDep, queue: WebhookQueueDep
) -> Response:
    """Delete a webhook: its pending deliveries are dropped."""
    await service.delete_webhook(
        store=store, user_id=user.user_id, webhook_id=str(webhookId), queue=queue
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{webhookId:uuid}/test",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404),
    dependencies=[write_limit],
)
async def test_webhook(
    webhookId: UUID, user: WebhooksUser, store: StoreDep, queue: WebhookQueueDep
) -> DeliveryQueued:
    """Send a `ping` event to this webhook (queued; see its deliveries)."""
    delivery = await service.send_test(
        store=store, queue=queue, user_id=user.user_id, webhook_id=str(webhookId)
    )
    return DeliveryQueued(deliveryId=delivery.delivery_id, event=delivery.event, status="pending")


@router.get("/{webhookId:uuid}/deliveries", responses=error_responses(404))
async def list_deliveries(webhookId: UUID, user: WebhooksUser, store: StoreDep) -> list[AttemptOut]:
    """Every delivery attempt to this webhook, newest first (the latest 100)."""
    attempts = await service.list_attempts(
        store=store, user_id=user.user_id, webhook_id=str(webhookId)
    )
    return [attempt_out(a) for a in attempts]


@router.post(
    "/{webhookId:uuid}/deliveries/{deliveryId}/redeliver",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(404),
    dependencies=[write_limit],
)
async def redeliver(
    webhookId: UUID,
    deliveryId: str,
    user: WebhooksUser,
    store: StoreDep,
    queue: WebhookQueueDep,
) -> DeliveryQueued:
    """Send a delivery again now, with the same `webhook-id`."""
    delivery = await service.redeliver(
        store=store,
        queue=queue,
        user_id=user.user_id,
        webhook_id=str(webhookId),
        delivery_id=deliveryId,
    )
    return DeliveryQueued(deliveryId=delivery.delivery_id, event=delivery.event, status="pending")
