"""Server-side batches over real `smartgen api` and `smartgen worker` processes, the fake
model server and a real Redis: a 200-row CSV batch runs to its end BATCH_CONCURRENCY at a
time while another user's job runs beside it; its results come back in input order; the
controls (idempotent submits, cancel, retry of the failed rows, run now) and the refusals
(another user's batch, hostile files) each say what happened."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

from tests.conftest import Process, register, start_system, wait_for_status
from tests.fakellm import FakeLLM, Reply
from tests.test_terminal import Client
from tests.test_webhooks import Receiver, receiver  # noqa: F401 - the receiver fixture

WAIT = 60.0  # bound for any wait; never a speed assertion
CSV_HEADER = "prompt,contentType,tone,keywords\r\n"


async def until(check: Callable[[], Any], within: float = WAIT, every: float = 0.1) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last: {value!r})")
        await asyncio.sleep(every)


async def batch_state(client: httpx.AsyncClient, headers: dict[str, str], batch_id: str) -> Any:
    r = await client.get(f"/batches/{batch_id}", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def ended(client: httpx.AsyncClient, headers: dict[str, str], batch_id: str) -> Any:
    async def check() -> Any:
        state = await batch_state(client, headers, batch_id)
        return state if state["status"] != "running" else None

    return await until(check)


async def logged_events(
    client: httpx.AsyncClient, headers: dict[str, str], stop: Callable[[str, Any], bool]
) -> list[tuple[int, str, Any]]:
    """The caller's event log from the start (GET /events), until `stop(name, data)`."""
    events: list[tuple[int, str, Any]] = []
    seq, name = 0, ""
    async with asyncio.timeout(WAIT):
        async with client.stream("GET", "/events?afterSeq=0", headers=headers) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    events.append((seq, name, data))
                    if stop(name, data):
                        return events
    raise AssertionError("the event stream ended")


def upload(name: str, data: bytes, kind: str = "text/csv", **fields: str) -> dict[str, Any]:
    return {"files": {"file": (name, data, kind)}, "data": fields}


async def test_a_200_row_csv_batch_runs_in_turns_beside_another_users_job(
    env: dict[str, str],
    processes: list[Process],
    fake_llm: FakeLLM,
    unique: str,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    """Issue 17's "done when": a program holding only an API key submits a 200-row CSV,
    is called back by a signed `batch.completed` webhook although its receiver fails the
    first attempts, and downloads the results."""
    slow, formula = f"[slow-{unique}]", f"[formula-{unique}]"
    fake_llm.always(slow, Reply(delay=0.03))
    fake_llm.always(formula, Reply(content='=HYPERLINK("http://evil.example","x")'))
    system_env = {
        **env,
        "BATCH_CONCURRENCY": "3",
        "GENERATION_DELAY_SECONDS": "0",
        "EVENT_LOG_MAX_EVENTS": "5000",
        "WEBHOOK_ALLOW_HTTP": "true",  # the receiver is plain http on loopback
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "WEBHOOK_RETRY_DELAYS_SECONDS": "1,1,1",
    }
    _, _, url = await start_system(system_env, processes)
    lines = [CSV_HEADER]
    for row in range(1, 203):
        if row == 50:
            lines.append('"   ",Product Description,,\r\n')  # blank prompt: rejected
        elif row == 120:
            lines.append(f"row {row} {slow},Poem,,\r\n")  # no such content type: rejected
        elif row == 7:
            lines.append(f"\"=cmd|' /C calc'!A0 {formula}\",Social Media Caption,bold,a;b\r\n")
        else:
            lines.append(f'"row {row}, {slow}",Product Description,friendly,eco;bamboo\r\n')
    data = "\ufeff" + "".join(lines)  # a byte-order mark, as spreadsheets write
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        account, other = await register(client), await register(client)
        # The login makes a key; from here on the program holds only the key.
        r = await client.post(
            "/api-keys",
            headers=account["headers"],
            json={"name": "CMS import", "scopes": ["generate", "read", "webhooks"]},
        )
        assert r.status_code == 201, r.text
        owner = {"headers": {"Authorization": f"Bearer {r.json()['key']}"}}
        r = await client.post(
            "/webhooks",
            headers=owner["headers"],
            json={"url": receiver.url + "/flaky/batches", "events": ["batch.completed"]},
        )
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        r = await client.post(
            "/batches", headers=owner["headers"], **upload("rows.csv", data.encode())
        )
        assert r.status_code == 202, r.text
        created = r.json()
        batch_id = created["batchId"]
        assert (created["total"], created["accepted"]) == (202, 200)
        assert [x["row"] for x in created["rejected"]] == [50, 120]
        assert "prompt" in created["rejected"][0]["error"]
        assert "contentType" in created["rejected"][1]["error"]

        # Another user's job queued while the batch runs finishes before the batch does.
        single = await client.post(
            "/generate-content",
            headers=other["headers"],
            json={"prompt": f"single {unique}", "contentType": "Blog Post Outline"},
        )
        assert single.status_code == 202, single.text
        await wait_for_status(
            client, single.json()["jobId"], other["headers"], {"completed"}, timeout=WAIT
        )
        meanwhile = await batch_state(client, owner["headers"], batch_id)
        assert meanwhile["status"] == "running" and meanwhile["progress"] < 1

        # The batch's jobs are ordinary jobs: visible, with their batch and row.
        page = await client.get(f"/batches/{batch_id}/jobs?limit=5", headers=owner["headers"])
        assert page.status_code == 200
        rows = page.json()
        assert [j["batchRow"] for j in rows["jobs"]] == [1, 2, 3, 4, 5]
        assert rows["nextAfterRow"] == 5
        job = (await client.get(f"/generate-content/{rows['jobs'][0]['jobId']}",
                                headers=owner["headers"])).json()  # fmt: skip
        assert job["batchId"] == batch_id and job["options"]["keywords"] == ["eco", "bamboo"]

        # Another user sees none of it.
        for path in ("", "/jobs", "/results"):
            r = await client.get(f"/batches/{batch_id}{path}", headers=other["headers"])
            assert r.status_code == 404 and r.json()["error"] == "batch_not_found", path
        r = await client.delete(f"/batches/{batch_id}", headers=other["headers"])
        assert r.status_code == 404
        r = await client.get("/batches/not-a-batch", headers=owner["headers"])
        assert r.status_code == 404

        final = await ended(client, owner["headers"], batch_id)
        assert final["status"] == "completed" and final["progress"] == 1
        assert final["counts"]["completed"] == 200 and final["completedAt"]
        listed = (await client.get("/batches", headers=owner["headers"])).json()
        assert [b["batchId"] for b in listed["batches"]] == [batch_id]

        # Never more than BATCH_CONCURRENCY of its jobs at once, in the order of the log.
        events = await logged_events(client, owner["headers"], lambda n, d: n == "batch_completed")
        running: set[str] = set()
        started: set[str] = set()
        most = 0
        for _, name, payload in events:
            if name != "job_status":
                continue
            job_id, state = payload["jobId"], payload["status"]
            if state == "processing" and job_id not in started:
                started.add(job_id)
                running.add(job_id)
            elif state in ("completed", "failed", "cancelled"):
                running.discard(job_id)
            most = max(most, len(running))
        assert len(started) == 200 and 1 <= most <= 3
        names = [name for _, name, _ in events]
        assert names.count("batch_completed") == 1 and "batch_progress" in names
        progress = [d for _, n, d in events if n == "batch_progress"]
        assert all(d["batchId"] == batch_id and 0 <= d["progress"] <= 1 for d in progress)

        # Results: one line per input row, in input order, formulas defused.
        r = await client.get(f"/batches/{batch_id}/results", headers=owner["headers"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(r.text)))
        assert [int(t["row"]) for t in table] == list(range(1, 203))
        assert table[49]["status"] == "rejected" and table[49]["jobId"] == ""
        assert table[119]["status"] == "rejected" and "contentType" in table[119]["error"]
        assert table[6]["content"].startswith("'=HYPERLINK")
        assert table[0]["status"] == "completed" and "row 1, " in table[0]["content"]
        r = await client.get(f"/batches/{batch_id}/results?format=jsonl", headers=owner["headers"])
        results = [json.loads(line) for line in r.text.splitlines()]
        assert [x["row"] for x in results] == list(range(1, 203))
        assert results[6]["content"].startswith("=HYPERLINK")  # JSON needs no defusing
        r = await client.get(f"/batches/{batch_id}/results?format=xlsx", headers=owner["headers"])
        assert r.status_code == 422

        # The receiver failed twice (500), then took it: three attempts, one webhook-id,
        # each signed for its own timestamp, verified by the standardwebhooks package.
        await until(lambda: len(receiver.at("/flaky/batches")) >= 3)
        attempts = receiver.at("/flaky/batches")
        assert len({a.headers["webhook-id"] for a in attempts}) == 1
        told = [Webhook(secret).verify(a.body, a.headers) for a in attempts]
        assert all(t == told[0] for t in told)
        assert told[0]["type"] == "batch.completed" and told[0]["data"]["batchId"] == batch_id
        assert told[0]["data"]["counts"]["completed"] == 200


async def test_batch_controls_and_refusals(
    env: dict[str, str],
    processes: list[Process],
    fake_llm: FakeLLM,
    unique: str,
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811 - the fixture imported above
) -> None:
    slow, failing = f"[slow-{unique}]", f"[fails-{unique}]"
    fake_llm.always(slow, Reply(chunk_delay=0.5, content="one two three four five six"))
    fake_llm.script(failing, [Reply(status=400), Reply(status=400)])
    system_env = {
        **env,
        "BATCH_CONCURRENCY": "2",
        "BATCH_MAX_ROWS": "50",
        "BATCH_MAX_UPLOAD_BYTES": "300000",
        "BATCH_RATE_LIMIT": "100",
        "GENERATION_DELAY_SECONDS": "0",
        # A batch larger than the cap runs: its waiting rows are not unfinished jobs.
        "MAX_UNFINISHED_JOBS": "6",
        "WEBHOOK_ALLOW_HTTP": "true",  # the receiver is plain http on loopback
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
    }
    _, _, url = await start_system(system_env, processes)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        user, other = await register(client), await register(client)
        headers = user["headers"]
        secret = (await client.get("/webhooks/secret", headers=headers)).json()["secret"]

        # Idempotent submit: the same key and body answer the first batch again.
        body = {
            "rows": [
                {"prompt": f"ok {n}", "contentType": "Blog Post Outline", "tone": "bold"}
                for n in (1, 2)
            ]
            + [{"prompt": f"bad {n} {failing}", "contentType": "Blog Post Outline"} for n in (3, 4)]
            + ["not an object", {"prompt": "x", "contentType": "Blog Post Outline", "nope": 1}]
            + [{"prompt": "y", "contentType": "Blog Post Outline", "webhookUrl": "https://a.b/c"}],
            "webhookUrl": receiver.url + "/batch",
        }
        key = {**headers, "Idempotency-Key": f"k-{unique}"}
        first = await client.post("/batches", json=body, headers=key)
        assert first.status_code == 202, first.text
        again = await client.post("/batches", json=body, headers=key)
        assert again.status_code == 202 and again.json() == first.json()
        assert again.headers.get("idempotent-replayed") == "true"
        changed = await client.post("/batches", json={**body, "delaySeconds": 5}, headers=key)
        assert changed.status_code == 422 and changed.json()["error"] == "idempotency_key_reused"
        created = first.json()
        assert (created["total"], created["accepted"]) == (7, 4)
        assert [x["row"] for x in created["rejected"]] == [5, 6, 7]
        assert "unknown field" in created["rejected"][1]["error"]
        assert "webhookUrl: not per row" in created["rejected"][2]["error"]
        batch_id = created["batchId"]

        # Two rows fail; retry-failed queues them again and the batch ends completed.
        state = await ended(client, headers, batch_id)
        assert state["counts"]["completed"] == 2 and state["counts"]["failed"] == 2
        assert state["webhookUrl"] == receiver.url + "/batch"
        # The batch's end, as a signed `batch.completed` webhook (standardwebhooks verifies).
        await until(lambda: receiver.at("/batch"))
        [told] = [Webhook(secret).verify(r.body, r.headers) for r in receiver.at("/batch")]
        assert told["type"] == "batch.completed" and told["data"]["batchId"] == batch_id
        assert told["data"]["counts"]["failed"] == 2
        r = await client.post(f"/batches/{batch_id}/retry-failed", headers=headers)
        assert r.status_code == 202 and r.json()["requeuedJobs"] == 2, r.text
        state = await ended(client, headers, batch_id)
        assert state["counts"]["completed"] == 4 and state["status"] == "completed"
        jobs = (await client.get(f"/batches/{batch_id}/jobs", headers=headers)).json()["jobs"]
        assert [len(j.get("history") or []) for j in jobs] == [0, 0, 1, 1]
        r = await client.post(f"/batches/{batch_id}/retry-failed", headers=other["headers"])
        assert r.status_code == 404

        # Run now, cancel one, then cancel the rest: nothing of it runs after.
        rows = [
            {"prompt": f"slow {n} {slow}", "contentType": "Blog Post Outline"} for n in range(8)
        ]
        r = await client.post("/batches", json={"rows": rows}, headers=headers)
        assert r.status_code == 202, r.text
        slow_id = r.json()["batchId"]
        jobs = (await client.get(f"/batches/{slow_id}/jobs", headers=headers)).json()["jobs"]
        waiting = [j for j in jobs if j.get("batchWaiting")]
        assert len(waiting) >= 5
        r = await client.patch(
            f"/generate-content/{waiting[0]['jobId']}",
            json={"prompt": f"changed {slow}", "delaySeconds": 1},
            headers=headers,
        )
        assert r.status_code == 200 and r.json()["batchWaiting"] is True, r.text
        assert r.json()["prompt"] == f"changed {slow}"
        r = await client.post(f"/generate-content/{waiting[-1]['jobId']}/run-now", headers=headers)
        assert r.status_code == 200 and "batchWaiting" not in r.json()
        r = await client.delete(f"/generate-content/{waiting[-2]['jobId']}", headers=headers)
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        r = await client.delete(f"/batches/{slow_id}", headers=headers)
        assert r.status_code == 200, r.text
        cancelled = r.json()
        assert cancelled["status"] == "cancelled" and cancelled["cancelledJobs"] >= 5
        assert cancelled["counts"]["waiting"] == 0
        state = await batch_state(client, headers, slow_id)
        assert state["counts"]["completed"] + state["counts"]["cancelled"] == 8
        r = await client.delete(f"/batches/{slow_id}", headers=headers)
        assert r.status_code == 200 and r.json()["cancelledJobs"] == 0

        # Hostile files, each refused with its reason.
        async def refused(status: int, error: str, **kw: Any) -> str:
            r = await client.post("/batches", headers=headers, **kw)
            assert r.status_code == status, r.text
            assert r.json()["error"] == error, r.text
            return str(r.json()["message"])

        message = await refused(
            422, "invalid_file", **upload("x.csv", b"prompt,contentType,evil\r\na,b,c\r\n")
        )
        assert "evil" in message
        message = await refused(
            422, "invalid_file", **upload("x.csv", CSV_HEADER.encode() + b"caf\xe9,Poem,,\r\n")
        )
        assert "UTF-8" in message
        huge = CSV_HEADER.encode() + b'"' + b"a" * 200_000 + b'",Blog Post Outline,,\r\n'
        assert "line" in await refused(422, "invalid_file", **upload("x.csv", huge))
        await refused(413, "payload_too_large", **upload("x.csv", b"a" * 400_000))
        many = CSV_HEADER + "".join(f"p{n},Blog Post Outline,,\r\n" for n in range(51))
        await refused(422, "batch_too_large", **upload("x.csv", many.encode()))
        await refused(422, "validation_error", json={"rows": [], "nope": 1})
        await refused(
            422,
            "webhook_url_refused",
            json={"rows": [{}], "webhookUrl": "https://169.254.169.254/"},
        )
        await refused(422, "validation_error", json={"rows": [{}], "webhookUrl": "ftp://x.y/"})
        r = await client.post(
            "/batches", headers={**headers, "Content-Type": "text/plain"}, content=b"hi"
        )
        assert r.status_code == 415
        # A JSONL file: a bad line is a rejected row, the others run.
        jsonl = b'{"prompt": "fine", "contentType": "Blog Post Outline"}\n{oops\n\n'
        r = await client.post(
            "/batches",
            headers=headers,
            **upload("rows.jsonl", jsonl, "application/x-ndjson", delaySeconds="0"),
        )
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == 1 and r.json()["rejected"] == [
            {"row": 2, "error": "not valid JSON"}
        ]

        # The terminal client: a file in, a progress bar, the results file out.
        terminal = Client(tmp_path, url)
        source = tmp_path / "rows.csv"
        source.write_text(
            CSV_HEADER
            + "one,Blog Post Outline,,\r\ntwo,Poem,,\r\nthree,Social Media Caption,bold,\r\n"
        )
        out = tmp_path / "out.csv"
        ran = await terminal.run("batch", str(source), "--wait", "--output", str(out))
        assert ran.code == 0, ran.err
        assert "2 of 3 rows queued, 1 rejected" in ran.err and "row 2: contentType" in ran.err
        assert f"results in {out}" in " ".join(ran.out.split())  # rich wraps long lines
        table = list(csv.DictReader(io.StringIO(out.read_text())))
        assert [(t["row"], t["status"]) for t in table] == [
            ("1", "completed"), ("2", "rejected"), ("3", "completed"),
        ]  # fmt: skip
        ran = await terminal.run("batch", str(tmp_path / "missing.csv"))
        assert ran.code == 2 and ran.err_lines == [
            f"smartgen: cannot read {tmp_path / 'missing.csv'}: No such file or directory"
        ]
        ran = await terminal.run("batch-status", "no-such-batch")
        assert ran.code == 1 and ran.err_lines == ["smartgen: batch no-such-batch not found"]
