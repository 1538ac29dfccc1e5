"""GET /metrics over real servers: HTTP answers by route template, jobs, the model's calls,
queue depth from Redis (cached), access by token, the worker's own endpoint, and several
API processes adding up (API_WORKERS=2, prometheus_client's multiprocess mode)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from smartgen.config import Settings
from smartgen.llm.client import ChatClient
from smartgen.llm.errors import LLMError
from smartgen.llm.metered import MeteredGenerator
from smartgen.models import ModelRequest
from tests.conftest import ApiServer, Process, free_port, register, wait_for_status, wait_http
from tests.fakellm import FakeLLM, Reply, completion_body
from tests.test_worker import queue, running_worker

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


async def scrape_when_up(url: str) -> Samples:
    """The first scrape of a worker that is starting: its metrics server opens as the
    worker starts (a busy machine may take a while), bounded."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        try:
            return await scrape(url)
        except httpx.ConnectError:
            assert asyncio.get_running_loop().time() < deadline, "no metrics server"
            await asyncio.sleep(0.1)


async def scrape(url: str, token: str | None = None) -> Samples:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(url + "/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return parse(r.text)


def with_changes(settings: Settings, **changes: Any) -> Settings:
    return settings.model_copy(update=changes)


async def test_http_jobs_and_queue_depth(settings: Settings) -> None:
    ttl = 2.0
    s = with_changes(settings, generation_delay_seconds=600, metrics_queue_cache_seconds=ttl)
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        before = await scrape(api.url)
        read_at = time.monotonic()
        user = await register(client)
        job = await queue(client, user["headers"], "metrics one", kind="Product Description")
        for _ in range(2):
            r = await client.get(f"/generate-content/{job['jobId']}", headers=user["headers"])
            assert r.status_code == 200
        assert (await client.get("/no/such/path")).status_code == 404
        await asyncio.sleep(max(0.0, read_at + ttl + 0.1 - time.monotonic()))
        first = await scrape(api.url)
        route = "/generate-content/{jobId}"
        grew = value(first, "smartgen_http_requests_total", route=route, method="GET", status="200")
        was = value(before, "smartgen_http_requests_total", route=route, method="GET", status="200")
        assert grew - was == 2
        assert (
            value(first, "smartgen_http_request_duration_seconds_count", route=route, method="GET")
            - value(
                before, "smartgen_http_request_duration_seconds_count", route=route, method="GET"
            )
            == 2
        )
        assert value(first, "smartgen_http_requests_total", route="other", status="404") >= 1
        queued = dict(content_type="Product Description", state="queued")
        assert (
            value(first, "smartgen_jobs_total", **queued)
            - value(before, "smartgen_jobs_total", **queued)
            == 1
        )
        # No id of any kind as a label value.
        text = (await client.get("/metrics")).text
        assert job["jobId"] not in text and user["userId"] not in text
        assert "/no/such/path" not in text
        # Queue depth, from Redis: this test's own queue (its own prefix) holds one job.
        assert value(first, "smartgen_redis_up") == 1
        assert value(first, "smartgen_queue_jobs", state="delayed") == 1
        assert value(first, "smartgen_queue_oldest_waiting_seconds") == 0
        # Read at most once per METRICS_QUEUE_CACHE_SECONDS: a job queued since the last
        # read shows only after it.
        read_at = time.monotonic()  # (just above, by the first scrape)
        await queue(client, user["headers"], "metrics two")
        second = await scrape(api.url)
        if time.monotonic() - read_at < ttl:
            assert value(second, "smartgen_queue_jobs", state="delayed") == 1
        await asyncio.sleep(ttl + 0.1)
        third = await scrape(api.url)
        assert value(third, "smartgen_queue_jobs", state="delayed") == 2


async def test_access_by_token_and_off(settings: Settings) -> None:
    s = with_changes(settings, metrics_token="scrape-" + "t" * 30)
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        for header in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            r = await client.get("/metrics", headers=header)
            assert r.status_code == 401
            assert r.json()["error"] == "unauthorized"
            assert r.json()["requestId"] == r.headers["x-request-id"]
        assert "smartgen_http_requests_total" in names(await scrape(api.url, s.metrics_token))
    off = with_changes(settings, metrics_enabled=False)
    async with ApiServer(off) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200


async def test_worker_endpoint_counts_jobs_model_calls_and_events(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    port = free_port()
    s = with_changes(
        settings, metrics_port=port, generation_delay_seconds=0.0, metrics_queue_cache_seconds=0
    )
    worker_url = f"http://127.0.0.1:{port}"
    marker = f"[metrics-{unique}]"
    model = dict(model="fake/model-1")
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        async with running_worker(s):
            before = await scrape_when_up(worker_url)
            job = await queue(client, user["headers"], f"ok {marker}", kind="Social Media Caption")
            done = await wait_for_status(
                client, job["jobId"], user["headers"], {"completed", "failed"}
            )
            assert done["status"] == "completed"
            await asyncio.sleep(0.3)  # the completion's events leave the publisher
            after = await scrape(worker_url)
            async with httpx.AsyncClient(timeout=5) as c:
                assert (await c.get(worker_url + "/healthz")).json() == {"status": "ok"}

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    caption = dict(content_type="Social Media Caption")
    assert grew("smartgen_jobs_total", state="completed", **caption) == 1
    assert grew("smartgen_job_queue_wait_seconds_count", **caption) == 1
    assert grew("smartgen_job_processing_seconds_count", state="completed", **caption) == 1
    assert grew("smartgen_llm_request_duration_seconds_count", **model) == 1
    assert grew("smartgen_llm_tokens_total", kind="prompt", **model) == 12  # the fake's usage
    assert grew("smartgen_llm_tokens_total", kind="completion", **model) == 34
    assert grew("smartgen_events_total", outcome="published") >= 3  # processing, completed
    assert value(after, "smartgen_queue_jobs", state="completed") >= 1
    # The model call named the job.
    (call,) = fake_llm.calls_for(marker)
    assert call.headers["x-smartgen-job-id"] == job["jobId"]


async def test_model_errors_by_kind(settings: Settings, fake_llm: FakeLLM, unique: str) -> None:
    """The real client against the fake provider (and a closed port), through the meter."""
    s = with_changes(settings, llm_timeout_seconds=0.5)
    cases = {
        "rate_limited": Reply(status=429),
        "server_error": Reply(status=502),
        "refused": Reply(status=400),
        "timeout": Reply(delay=1.5),
        "malformed": Reply(raw_body=b"{not json"),
    }
    client = MeteredGenerator(ChatClient(s))
    try:
        for kind, reply in cases.items():
            marker = f"[kind-{kind}-{unique}]"
            fake_llm.script(marker, [reply])
            before = value(parse_registry(), "smartgen_llm_errors_total", kind=kind)
            with pytest.raises(LLMError):
                await client.generate(request(marker))
            assert value(parse_registry(), "smartgen_llm_errors_total", kind=kind) - before == 1
    finally:
        await client.close()
    closed = with_changes(settings, base_url=f"http://127.0.0.1:{free_port()}/v1")
    unreachable = MeteredGenerator(ChatClient(closed))
    try:
        before = value(parse_registry(), "smartgen_llm_errors_total", kind="unreachable")
        with pytest.raises(LLMError):
            await unreachable.generate(request("nobody listens"))
        after = value(parse_registry(), "smartgen_llm_errors_total", kind="unreachable")
        assert after - before == 1
    finally:
        await unreachable.close()


def request(prompt: str) -> ModelRequest:
    return ModelRequest("Blog Post Outline", prompt, [{"role": "user", "content": prompt}])


def parse_registry() -> Samples:
    from prometheus_client import REGISTRY, generate_latest

    return parse(generate_latest(REGISTRY).decode())


async def test_several_api_processes_answer_for_all(
    env: dict[str, str], processes: list[Process]
) -> None:
    """With API_WORKERS=2 a scrape reaches either process; each answers for both."""
    port = free_port()
    api = Process("api", env, PORT=str(port), API_WORKERS="2")
    processes.append(api)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    route = dict(route="/healthz", method="GET", status="200")
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        start = value(await scrape(url), "smartgen_http_requests_total", **route)
        # New connections, handed to the two processes in turn.
        for _ in range(20):
            async with httpx.AsyncClient(base_url=url, timeout=10) as one:
                assert (await one.get("/healthz")).status_code == 200
        seen = []
        for _ in range(6):
            async with httpx.AsyncClient(timeout=10) as one:
                text = (await one.get(url + "/metrics")).text
            seen.append(value(parse(text), "smartgen_http_requests_total", **route) - start)
        assert all(count >= 20 for count in seen), seen
        assert (await client.get("/healthz")).headers["x-request-id"]


DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
METRIC_NAME = re.compile(r"\bsmartgen_[a-z0-9_]+")


def dashboard_metrics() -> set[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    return {name for expr in exprs for name in METRIC_NAME.findall(expr)}


async def test_every_metric_the_dashboard_queries_exists(
    settings: Settings, fake_llm: FakeLLM, unique: str
) -> None:
    """The Grafana dashboard in docs/ queries only metrics a real scrape has (the API's
    and the worker's, after a job with a retry, tokens and a cost)."""
    used = dashboard_metrics()
    # What the dashboard is for: queue depth, throughput, latencies, errors, cost.
    assert {
        "smartgen_queue_jobs",
        "smartgen_jobs_total",
        "smartgen_http_request_duration_seconds_bucket",
        "smartgen_llm_request_duration_seconds_bucket",
        "smartgen_http_requests_total",
        "smartgen_llm_errors_total",
        "smartgen_llm_cost_usd_total",
        "smartgen_llm_tokens_total",
    } <= used
    port = free_port()
    s = with_changes(
        settings, metrics_port=port, generation_delay_seconds=0.0, metrics_queue_cache_seconds=0
    )
    marker = f"[dashboard-{unique}]"
    paid = completion_body("# Paid", "fake/model-1")
    paid["usage"]["cost"] = 0.0042
    fake_llm.script(marker, [Reply(status=500), Reply(json_body=paid)])
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        async with running_worker(s):
            job = await queue(client, user["headers"], f"dash {marker}")
            done = await wait_for_status(client, job["jobId"], user["headers"], {"completed"})
            assert done["attempts"] == 2
            await asyncio.sleep(0.3)
            found = names(await scrape(api.url)) | names(await scrape(f"http://127.0.0.1:{port}"))
    assert used - found == set(), f"queried but never exported: {sorted(used - found)}"
    assert value(parse_registry(), "smartgen_llm_cost_usd_total") >= 0.0042
