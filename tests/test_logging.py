"""Request-scoped logs: X-Request-ID on every answer (the caller's when sane), requestId in
error bodies and in the log line of a 5xx, LOG_FORMAT=json lines, and a job's id from the
API through the queue to the worker's lines and the model call."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from smartgen.config import Settings
from smartgen.kit.logcontext import JsonFormatter, sane_request_id
from tests.conftest import ApiServer, Process, free_port, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply

GENERATED = re.compile(r"[0-9a-f]{24}")


def test_sane_request_ids() -> None:
    for kept in ("abc", "trace-1.2_3:4@x/y=z+", "A" * 128):
        assert sane_request_id(kept) == kept
    assert sane_request_id(b" padded ") == "padded"
    for refused in ("", "a b", "x" * 129, "<script>", "line\nbreak", "é", None, 42):
        assert sane_request_id(refused) is None


async def test_every_answer_carries_a_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert GENERATED.fullmatch(r.headers["x-request-id"])
    assert r.headers["x-request-id"] != (await client.get("/healthz")).headers["x-request-id"]
    # The caller's id when sane; errors name it.
    r = await client.get("/auth/me", headers={"X-Request-ID": "support-ticket-42"})
    assert r.status_code == 401
    assert r.headers["x-request-id"] == "support-ticket-42"
    assert r.json()["requestId"] == "support-ticket-42"
    # A hostile or oversized one is replaced.
    for hostile in ("x" * 300, "a b", "<script>alert(1)</script>"):
        r = await client.get("/no/such/path", headers={"X-Request-ID": hostile})
        assert r.status_code == 404
        assert GENERATED.fullmatch(r.headers["x-request-id"])
        assert r.json()["requestId"] == r.headers["x-request-id"]
    # Errors answered before any route (the body checks), validation errors, Socket.IO.
    r = await client.post("/auth/login", content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415
    assert r.json()["requestId"] == r.headers["x-request-id"]
    r = await client.post("/auth/register", json={"email": "nope"})
    assert r.status_code == 422
    assert r.json()["requestId"] == r.headers["x-request-id"]
    r = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert r.status_code == 200
    assert GENERATED.fullmatch(r.headers["x-request-id"])


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """smartgen's log lines, as LOG_FORMAT=json writes them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("smartgen")
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


async def test_a_5xx_logs_a_line_naming_request_and_user(
    settings: Settings, json_lines: io.StringIO
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    s = settings.model_copy(update={"redis_url": dead_redis, "queue_timeout_seconds": 0.5})
    s.__dict__.pop("redis_connection_url", None)
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        user = await register(client)
        r = await client.post(
            "/generate-content",
            json={"prompt": "down", "contentType": "Blog Post Outline"},
            headers={**user["headers"], "X-Request-ID": "report-7"},
        )
    assert r.status_code == 503
    assert r.json()["requestId"] == "report-7"
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    (line,) = [x for x in lines if x.get("requestId") == "report-7"]
    assert line["userId"] == user["userId"]
    assert line["level"] == "warning"
    assert line["logger"] == "smartgen.api"
    assert "503 queue_unavailable" in line["message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    out = []
    for line in text.splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


async def test_json_logs_follow_a_job_from_request_to_model_call(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    marker = f"[jsonlog-{unique}]"
    fake_llm.script(marker, [Reply(status=502)])  # one retry, logged by the worker
    env = {**env, "LOG_FORMAT": "json", "LOG_LEVEL": "info", "GENERATION_DELAY_SECONDS": "0"}
    api, worker, url = await start_system(env, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        user = await register(client)
        r = await client.post(
            "/generate-content",
            json={"prompt": f"follow me {marker}", "contentType": "Blog Post Outline"},
            headers={**user["headers"], "X-Request-ID": f"trace-{unique}"},
        )
        assert r.status_code == 202
        job_id = r.json()["jobId"]
        job = await wait_for_status(client, job_id, user["headers"], {"completed", "failed"})
    assert job["status"] == "completed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = parse_lines(worker.output())
        about = [x for x in lines if x.get("jobId") == job_id]
        if about:
            break
        await asyncio.sleep(0.1)
    assert about, worker.output()
    for line in about:
        assert line["requestId"] == f"trace-{unique}"
        assert {"time", "level", "logger", "message"} <= set(line)
    assert any("will retry" in line["message"] for line in about)
    # Lines not about a job name none.
    assert any("worker ready" in x["message"] and "jobId" not in x for x in lines)
    # Both model calls (the 502 and the retry) named the job.
    calls = fake_llm.calls_for(marker)
    assert len(calls) == 2
    assert {c.headers["x-smartgen-job-id"] for c in calls} == {job_id}
    # The API's lines, uvicorn's included, are JSON too.
    api_lines = parse_lines(api.output())
    assert any(x["logger"].startswith("uvicorn") for x in api_lines), api.output()
