"""Schemathesis (its CLI) against the API's own OpenAPI schema, over HTTP to a real
`smartgen api`: no 5xx, and every response, errors included, matches the schema."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import Process, free_port, wait_http

NO_LIMITS = {
    "GENERATE_RATE_LIMIT": "0",
    "REGISTER_IP_RATE_LIMIT": "0",
    "LOGIN_RATE_LIMIT": "0",
    "LOGIN_IP_RATE_LIMIT": "0",
    "LOGIN_EMAIL_FAILURE_LIMIT": "0",
    "GENERATE_IP_RATE_LIMIT": "0",
    "SAVE_RATE_LIMIT": "0",
    "BATCH_RATE_LIMIT": "0",
}


# Departures from schemathesis's defaults, each because the API means something a
# schema cannot state:
FUZZ_CONFIG = """
# A webhook URL must be one the server may call (https, resolving to public addresses),
# and the default secret is revealed once (409 afterwards): rules about the world and
# about history, which a schema cannot state; such a request is a 422 or 409 naming why.
[[operations]]
include-path-regex = "^/webhooks"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422, 429]

# An API key's expiresAt must be in the future: a limit relative to the clock. (One
# filter per entry, on the operation's name ("METHOD /path") where a method matters:
# schemathesis joins an entry's filters with OR, so `include-path` beside
# `include-method` would loosen every operation of that method.)
[[operations]]
include-path-regex = "^/api-keys$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 422, 429]

# PATCH's scheduledFor may be at most MAX_DELAY_SECONDS from now and not both it and
# delaySeconds: limits relative to the clock and between fields; such a request is a 422
# naming the field.
[[operations]]
include-name = "PATCH /generate-content/{jobId}"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422, 429]

# An Idempotency-Key sent again with another body is refused (422, as Stripe does); the
# fuzzer sends one header value with many bodies.
[[operations]]
include-name-regex = "^POST (/generate-content(/[^/]+/retry)?|/batches)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422, 429]

# A voice's texts are read as the system message will carry them: without NUL (PostgreSQL
# cannot store it) and trimmed; a patch names at least one field with a value. Such a
# request is a 422 naming the field.
[[operations]]
include-name-regex = "^(POST /voices|PATCH /voices/[{]voiceId[}])$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 422, 429]

# GET /usage: `to` after `from`, and at most 366 days between them (a limit between
# fields); such a request is a 422 naming `to`.
[[operations]]
include-name = "GET /usage"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 422, 429]

# The library: a cursor is only what an earlier page gave (any other string is a 422
# `invalid_cursor`), a patch needs at least one field and tags that are not blank once
# trimmed; a job is rated only once completed (409).
[[operations]]
include-name-regex = "^(GET|PATCH) /contents(/[{]contentId[}])?$"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 422, 429]

[[operations]]
include-name = "POST /generate-content/{jobId}/feedback"
checks.positive_data_acceptance.expected-statuses = ["2xx", 401, 403, 404, 409, 422, 429]
"""


@pytest.mark.timeout(600)
async def test_api_conforms_to_its_own_schema(
    env: dict[str, str], processes: list[Process], tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    port = free_port()
    api = Process("api", {**env, **NO_LIMITS}, PORT=str(port))
    processes.append(api)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, api)
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post(
            "/auth/register", json={"email": "fuzz@example.com", "password": "fuzz password"}
        )
        token = r.json()["token"]
    (tmp_path / "schemathesis.toml").write_text(FUZZ_CONFIG)
    command = [
        cli,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        # DELETE /generate-content/{jobId} cancels a job: a cancelled job stays readable
        # (GET answers it, status "cancelled"), so "a deleted resource is gone" does not apply.
        "--exclude-checks",
        "use_after_free",
        # Logging out ends the one session the run has: every later call would be a 401
        # (tests/test_account.py covers logout).
        "--exclude-path",
        "/auth/logout",
        # GET /events is a stream that does not end: every example would wait out the
        # request timeout (five of the run's six minutes). Its status codes and parameter
        # errors are asserted in tests/test_event_log.py.
        "--exclude-path",
        "/events",
        "--max-examples",
        "30",
        "--seed",
        "1",
        "--header",
        f"Authorization: Bearer {token}",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=540, cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert api.proc.poll() is None
    assert "Traceback" not in api.output(), api.output()[-4000:]
