"""The worker remembers each user's webhook endpoints (`webhooks.endpoints`) instead of
reading them from the store at every job's end. On each store, with a real Redis: a
remembered list is used while the user's change token stands still, and read again after
each write of the service's (create, update, delete) and of the delivery task's (an
endpoint disabled), with a token Redis no longer answers for, and after its max age. Over
real `smartgen api` and `worker` processes: an endpoint created after the worker had
remembered that its user has none receives the next job's event, and one deleted
receives nothing more."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from smartgen.config import Settings
from smartgen.kit.times import iso_ms
from smartgen.queue.webhooks import BullWebhookQueue
from smartgen.redis_clients import redis_client
from smartgen.store import open_store
from smartgen.store.base import Store
from smartgen.webhooks import service
from smartgen.webhooks.endpoints import CachedEndpoints
from tests.conftest import Process, all_stores, register, start_system, wait_for_status
from tests.test_webhooks import Receiver, events_of, receiver  # noqa: F401 (fixture)

WAIT = 30.0


async def _no_dns(host: str, port: int) -> list[str]:
    return ["93.184.216.34"]  # a public address: the URL rules pass


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[Store, BullWebhookQueue]]:
    store = open_store(settings)
    await store.init()
    queue = BullWebhookQueue(settings, redis_client(settings, "request"))
    try:
        yield store, queue
    finally:
        await queue.close()
        await store.close()


@all_stores
async def test_remembered_until_the_users_endpoints_change(
    parts: tuple[Store, BullWebhookQueue], settings: Settings, unique: str
) -> None:
    store, queue = parts
    cache = CachedEndpoints(store, queue)
    user, other = f"u-{unique}", f"v-{unique}"
    assert await cache.for_user(user) == []
    assert await cache.for_user(user) == []
    assert cache.reads == 1  # remembered: no store read at the second job's end

    made = await service.create_webhook(
        store=store, settings=settings, user_id=user, url="https://hooks.example/a",
        events=["job.completed"], description="", queue=queue, resolve=_no_dns,
    )  # fmt: skip
    found = await cache.for_user(user)
    assert [e.webhook_id for e in found] == [made.webhook_id] and cache.reads == 2
    assert await cache.for_user(other) == [] and cache.reads == 3  # its own entry
    assert len(await cache.for_user(user)) == 1 and cache.reads == 3

    await service.update_webhook(
        store=store, settings=settings, user_id=user, webhook_id=made.webhook_id,
        enabled=False, queue=queue, resolve=_no_dns,
    )  # fmt: skip
    assert [e.enabled for e in await cache.for_user(user)] == [False]
    await service.update_webhook(
        store=store, settings=settings, user_id=user, webhook_id=made.webhook_id,
        enabled=True, queue=queue, resolve=_no_dns,
    )  # fmt: skip
    assert [e.enabled for e in await cache.for_user(user)] == [True]

    # Disabled by the delivery task (its failures lasted too long): read again too.
    assert await store.webhooks.disable(made.webhook_id, at=made.updated_at)
    await service.endpoints_changed(queue, user)
    assert [e.enabled for e in await cache.for_user(user)] == [False]

    await service.delete_webhook(store=store, user_id=user, webhook_id=made.webhook_id, queue=queue)
    assert await cache.for_user(user) == []
    reads = cache.reads
    assert await cache.for_user(user) == [] and cache.reads == reads

    # The token lost with Redis's data (None again): read again, as it differs.
    await service.create_webhook(
        store=store, settings=settings, user_id=user, url="https://hooks.example/b",
        events=["job.failed"], description="", queue=queue, resolve=_no_dns,
    )  # fmt: skip
    assert len(await cache.for_user(user)) == 1
    redis = redis_client(settings, "request")
    try:
        deleted = await redis.delete(f"{settings.queue_prefix}:smartgen:webhooks-changed:{user}")
        assert deleted == 1
    finally:
        await redis.aclose()
    reads = cache.reads
    assert len(await cache.for_user(user)) == 1 and cache.reads == reads + 1


async def test_read_each_time_without_redis_and_after_the_max_age(
    parts: tuple[Store, BullWebhookQueue], settings: Settings, unique: str
) -> None:
    store, queue = parts
    user = f"u-{unique}"
    aged = CachedEndpoints(store, queue, max_age=0.2)
    assert await aged.for_user(user) == [] and aged.reads == 1
    assert await aged.for_user(user) == [] and aged.reads == 1
    started = time.monotonic()
    while aged.reads == 1:
        await aged.for_user(user)
        await asyncio.sleep(0.05)
    assert time.monotonic() - started >= 0.2

    # A Redis that does not answer: the store is read at every job's end, as before.
    gone = Settings(**{**settings.model_dump(), "redis_url": "redis://127.0.0.1:1/0"})
    dead = BullWebhookQueue(gone, redis_client(gone, "request"))
    try:
        blind = CachedEndpoints(store, dead)
        assert await blind.for_user(user) == [] and await blind.for_user(user) == []
        assert blind.reads == 2
        # And the service's writes still succeed (their change not recorded, logged).
        made = await service.create_webhook(
            store=store, settings=settings, user_id=user, url="https://hooks.example/c",
            events=["job.completed"], description="", queue=dead, resolve=_no_dns,
        )  # fmt: skip
        assert made.user_id == user
        assert [e.webhook_id for e in await blind.for_user(user)] == [made.webhook_id]
    finally:
        await dead.close()


async def test_a_webhook_created_while_the_worker_runs_gets_the_next_jobs_event(
    env: dict[str, str],
    processes: list[Process],
    receiver: Receiver,  # noqa: F811 (the fixture)
    settings: Settings,
) -> None:
    system = {**env, "WEBHOOK_ALLOW_HTTP": "true", "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
              "GENERATION_DELAY_SECONDS": "0"}  # fmt: skip
    _, _, url = await start_system(system, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        user = await register(c)
        h = user["headers"]
        job = {"contentType": "Product Description", "prompt": "Rye bread"}

        async def run_job(**extra: Any) -> str:
            r = await c.post("/generate-content", json={**job, **extra}, headers=h)
            assert r.status_code == 202, r.text
            job_id = str(r.json()["jobId"])
            await wait_for_status(c, job_id, h, {"completed"})
            return job_id

        # The worker learns that this user has no endpoint (and remembers it).
        await run_job()
        await run_job()
        assert (await c.get("/webhooks/secret", headers=h)).status_code == 200  # for webhookUrl
        r = await c.post(
            "/webhooks", json={"url": receiver.url + "/hook", "events": ["job.completed"]},
            headers=h,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        hook, secret = r.json()["id"], r.json()["secret"]
        first = await run_job()

        async def got(job_id: str) -> bool:
            return any(
                e["data"]["jobId"] == job_id
                for e in events_of([x for x in receiver.received if x.path == "/hook"], secret)
            )

        deadline = time.monotonic() + WAIT
        while not await got(first):
            assert time.monotonic() < deadline, "the new endpoint never got the job's event"
            await asyncio.sleep(0.1)

        # Deleted: the next job's event goes to its own `webhookUrl` only. Both deliveries
        # (had there been two) are written by one call, the endpoint's first: once the
        # job's own is in the store, the endpoint's would be too.
        assert (await c.delete(f"/webhooks/{hook}", headers=h)).status_code == 204
        second = await run_job(webhookUrl=receiver.url + "/own")
        store = open_store(settings)  # the same database as the system's
        try:
            ended = await store.jobs.get(second)
            assert ended is not None
            key = f"job.completed:{second}:{iso_ms(ended.updated_at)}"
            own = service.delivery_id_of(key, receiver.url + "/own")
            deadline = time.monotonic() + WAIT
            while await store.webhooks.get_delivery(own) is None:
                assert time.monotonic() < deadline, "the job's own webhookUrl got nothing"
                await asyncio.sleep(0.1)
            assert await store.webhooks.get_delivery(service.delivery_id_of(key, hook)) is None
        finally:
            await store.close()
        assert not await got(second)
