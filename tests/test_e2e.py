"""End to end with the real processes: `smartgen api` and `smartgen worker` (and `dev`)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from tests.conftest import (
    Process,
    all_stores,
    free_port,
    start_system,
    wait_for_status,
    wait_http,
)
from tests.fakellm import FakeLLM, Reply


@all_stores
async def test_seed_flow_with_real_processes(
    env: dict[str, str], processes: list[Process], fake_llm: FakeLLM, unique: str
) -> None:
    api, worker, url = await start_system(env, processes)
    ok, down, flaky = f"[e2e-{unique}]", f"[e2e-down-{unique}]", f"[e2e-429-{unique}]"
    fake_llm.always(down, Reply(status=500))
    fake_llm.script(flaky, [Reply(status=429, headers={"Retry-After": "1"})])

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post(
            "/auth/register", json={"email": f"a{unique}@example.com", "password": "pa55word!"}
        )
        assert r.status_code == 201
        alice = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await client.post(
            "/auth/register", json={"email": f"b{unique}@example.com", "password": "pa55word!"}
        )
        bob = {"Authorization": f"Bearer {r.json()['token']}"}

        jobs = {}
        for name, prompt in [
            ("ok", f"Sourdough {ok}"),
            ("down", f"x {down}"),
            ("flaky", f"y {flaky}"),
        ]:
            r = await client.post(
                "/generate-content",
                json={"prompt": prompt, "contentType": "Blog Post Outline"},
                headers=alice,
            )
            assert r.status_code == 202
            jobs[name] = r.json()
        # Before the delay expires: still queued.
        r = await client.get(f"/generate-content/{jobs['ok']['jobId']}", headers=alice)
        assert r.json()["status"] == "queued"
        assert "generatedContent" not in r.json()

        done = await wait_for_status(client, jobs["ok"]["jobId"], alice, {"completed", "failed"})
        assert done["status"] == "completed"
        assert done["generatedContent"].startswith(f"# Outline: Sourdough {ok}")
        failed = await wait_for_status(
            client, jobs["down"]["jobId"], alice, {"completed", "failed"}, 30
        )
        assert failed["status"] == "failed" and failed["error"]
        assert "generatedContent" not in failed
        recovered = await wait_for_status(
            client, jobs["flaky"]["jobId"], alice, {"completed", "failed"}, 30
        )
        assert recovered["status"] == "completed"

        listed = (await client.get("/generate-content", headers=alice)).json()
        assert [j["jobId"] for j in listed] == [jobs[n]["jobId"] for n in ("flaky", "down", "ok")]
        assert (await client.get("/generate-content", headers=bob)).json() == []
        assert (
            await client.get(f"/generate-content/{jobs['ok']['jobId']}", headers=bob)
        ).status_code == 404

        r = await client.post(f"/generate-content/{jobs['ok']['jobId']}/save", headers=alice)
        assert r.status_code == 201
        saved = r.json()
        assert saved["title"] == f"Outline: Sourdough {ok}"
        assert saved["body"] == done["generatedContent"]
        r = await client.post(
            f"/generate-content/{jobs['ok']['jobId']}/save", json={"title": "Other"}, headers=alice
        )
        assert r.status_code == 200
        assert r.json()["contentId"] == saved["contentId"]
        r = await client.post(f"/generate-content/{jobs['down']['jobId']}/save", headers=alice)
        assert r.status_code == 409
        r = await client.post(f"/generate-content/{jobs['ok']['jobId']}/save", headers=bob)
        assert r.status_code == 404
        contents = (await client.get("/contents", headers=alice)).json()
        assert [c["contentId"] for c in contents] == [saved["contentId"]]

    # SIGTERM stops both cleanly.
    assert worker.stop() == 0, worker.output()
    assert api.stop() == 0, api.output()
    assert "Traceback" not in worker.output() + api.output()
    assert "sk-or-test-key" not in worker.output() + api.output()


async def test_dev_runs_both_and_stops_on_sigint(
    env: dict[str, str], processes: list[Process], unique: str
) -> None:
    port = free_port()
    dev = Process("dev", env, PORT=str(port))
    processes.append(dev)
    url = f"http://127.0.0.1:{port}"
    await wait_http(url, dev)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        r = await client.post(
            "/auth/register", json={"email": f"d{unique}@example.com", "password": "pa55word!"}
        )
        headers = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await client.post(
            "/generate-content",
            json={"prompt": f"dev {unique}", "contentType": "Social Media Caption"},
            headers=headers,
        )
        job = await wait_for_status(client, r.json()["jobId"], headers, {"completed", "failed"})
        assert job["status"] == "completed"
    dev.proc.send_signal(signal.SIGINT)
    for _ in range(200):
        if dev.proc.poll() is not None:
            break
        await asyncio.sleep(0.1)
    assert dev.proc.returncode == 0, dev.output()


async def test_missing_setting_stops_with_one_line(
    env: dict[str, str], processes: list[Process]
) -> None:
    api = Process("api", {**env, "JWT_SECRET": ""})
    processes.append(api)
    assert api.proc.wait(20) == 2
    out = api.output().strip()
    assert out.startswith("smartgen: configuration error: JWT_SECRET is not set")
    assert len(out.splitlines()) == 1
    worker = Process(
        "worker",
        {
            **env,
            "OPENROUTER_KEY": "",
            "BASE_URL": "https://openrouter.ai/api/v1",
            "LLM_PROVIDER": "openai",
        },
    )
    processes.append(worker)
    assert worker.proc.wait(20) == 2
    assert "OPENROUTER_KEY is not set" in worker.output()


@all_stores
async def test_unreachable_database_is_one_line_and_exit_3(
    env: dict[str, str], processes: list[Process], store_kind: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file-not-a-directory"
    blocker.write_text("x")
    dead_store = {
        "mongodb": {"MONGO_URI": f"mongodb://127.0.0.1:{free_port()}/x"},
        "postgresql": {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"},
        "sqlite": {"DATABASE_URL": f"sqlite:///{blocker}/smartgen.db"},
    }[store_kind]
    dead = {k: v for k, v in env.items() if k not in ("MONGO_URI", "DATABASE_URL")}
    dead.update(dead_store, PORT=str(free_port()))
    for command in ("api", "worker"):
        proc = Process(command, dead)
        processes.append(proc)
        assert proc.proc.wait(30) == 3, proc.output()
        out = proc.output().strip().splitlines()
        assert out[-1].startswith("smartgen: "), out
        assert "Traceback" not in proc.output()
