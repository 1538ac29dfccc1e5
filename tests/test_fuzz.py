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
}


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
    command = [
        cli,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
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
