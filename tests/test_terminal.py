"""The terminal client (`smartgen generate | jobs | show | save`) as a user runs it: a real
subprocess against the real `smartgen api` and `smartgen worker` processes, with its own
config dir. Stdout carries the result (one JSON document with --json), errors are one line."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Process, free_port, start_system
from tests.fakellm import FakeLLM, Reply

RUN_TIMEOUT = 90.0  # upper bound for one client run; never a speed assertion


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


class Client:
    """Runs `python -m smartgen.terminal …` with a private config dir and HOME."""

    def __init__(self, home: Path, url: str | None) -> None:
        self.home = home
        self.url = url
        self.config = home / "config"
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("SMARTGEN_URL", "PORT", "NO_COLOR")
        }
        self.env.update(
            XDG_CONFIG_HOME=str(self.config),
            HOME=str(home),
            COLUMNS="120",
            PYTHONUNBUFFERED="1",
        )

    @property
    def credentials_file(self) -> Path:
        return self.config / "smartgen" / "credentials.json"

    def credentials(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.credentials_file.read_text())
        return data

    async def run(self, *args: str, url: bool = True, **env: str) -> Run:
        argv = [sys.executable, "-m", "smartgen.terminal", *args]
        if url and self.url:
            argv += ["--url", self.url]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env={**self.env, **env},
            cwd=self.home,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"client did not finish within {RUN_TIMEOUT}s: {args}") from None
        result = Run(int(proc.returncode or 0), out.decode(), err.decode())
        assert "Traceback" not in result.err, result.err
        return result


@pytest.fixture
async def server_url(env: dict[str, str], processes: list[Process]) -> str:
    """A real API and worker (GENERATION_DELAY_SECONDS=1) on a loopback port."""
    _, _, url = await start_system(env, processes)
    return url


async def test_generate_json_with_save_then_jobs_and_show_reuse_the_token(
    server_url: str, tmp_path: Path, unique: str
) -> None:
    client = Client(tmp_path, server_url)
    prompt = f"How to bake a sourdough bread {unique}"
    r = await client.run(
        "generate", prompt, "--type", "Blog Post Outline", "--json", "--title", "My Sourdough"
    )
    assert r.code == 0, r.err
    assert r.err == ""  # --json: no notices, no progress
    job = r.json()
    assert job["status"] == "completed"
    assert job["prompt"] == prompt and job["contentType"] == "Blog Post Outline"
    assert job["generatedContent"].startswith(f"# Outline: {prompt}")
    assert job["saved"]["title"] == "My Sourdough"
    assert job["saved"]["jobId"] == job["jobId"]
    assert job["saved"]["body"] == job["generatedContent"]

    # First use registered a local user; the file is private to its owner.
    assert stat.S_IMODE(client.credentials_file.stat().st_mode) == 0o600
    entry = client.credentials()[server_url]
    assert entry["email"].endswith("@localhost.smartgen")
    assert entry["local"] is True and entry["token"] and entry["password"]

    r = await client.run("jobs", "--json")
    assert r.code == 0, r.err
    listed = r.json()
    assert [j["jobId"] for j in listed] == [job["jobId"]]
    r = await client.run("jobs", "--json", "--status", "failed")
    assert r.code == 0 and r.json() == []

    r = await client.run("show", job["jobId"], "--json")
    assert r.code == 0, r.err
    shown = r.json()
    assert shown["jobId"] == job["jobId"] and shown["status"] == "completed"
    assert shown["generatedContent"] == job["generatedContent"]
    assert "saved" not in shown

    # The second and third runs reused the stored token: no new login, no new user.
    assert client.credentials()[server_url] == entry

    # A refused token is replaced by logging in again as the same local user.
    client.credentials_file.write_text(json.dumps({server_url: {**entry, "token": "bad.token"}}))
    r = await client.run("jobs", "--json")
    assert r.code == 0, r.err
    assert [j["jobId"] for j in r.json()] == [job["jobId"]]
    renewed = client.credentials()[server_url]
    assert renewed["email"] == entry["email"] and renewed["token"] not in ("bad.token", "")
    assert stat.S_IMODE(client.credentials_file.stat().st_mode) == 0o600

    # Saving again returns the existing content.
    r = await client.run("save", job["jobId"], "--json")
    assert r.code == 0, r.err
    assert r.json()["contentId"] == job["saved"]["contentId"]


async def test_text_mode_renders_markdown_and_a_table(
    server_url: str, tmp_path: Path, unique: str
) -> None:
    client = Client(tmp_path, server_url)
    prompt = f"Sourdough {unique}"
    r = await client.run("generate", prompt, "-t", "blog")
    assert r.code == 0, r.err
    # Rendered, not raw: the heading's text is there, its Markdown syntax is not.
    assert f"Outline: {prompt}" in r.out
    assert "Introduction" in r.out and "Why it matters" in r.out
    assert "# Outline" not in r.out and "## Introduction" not in r.out
    assert "registered local user" in r.err  # notices and progress go to stderr
    job_id = (await client.run("jobs", "--json")).json()[0]["jobId"]

    r = await client.run("jobs")
    assert r.code == 0, r.err
    assert job_id in r.out and "completed" in r.out and "Blog Post Outline" in r.out

    r = await client.run("show", job_id)
    assert r.code == 0, r.err
    assert f"Outline: {prompt}" in r.out and "# Outline" not in r.out

    # --no-wait returns at once; saving a job that has not completed is refused.
    r = await client.run("generate", f"later {unique}", "--no-wait", "--json")
    assert r.code == 0, r.err
    queued = r.json()
    assert queued["status"] == "queued" and queued["jobId"]
    r = await client.run("save", queued["jobId"])
    assert r.code == 1
    assert len(r.err_lines) == 1 and r.err_lines[0].startswith("smartgen: ")
    assert r.out == ""


async def test_errors_print_one_line_and_exit_1(
    server_url: str, tmp_path: Path, unique: str, fake_llm: FakeLLM
) -> None:
    client = Client(tmp_path, server_url)

    r = await client.run("generate", "x" * 5000, "--json")  # PROMPT_MAX_CHARS is 4000
    assert (r.code, r.out) == (1, "")
    assert r.err_lines == ["smartgen: prompt: must be at most 4000 characters (got 5000)"]

    r = await client.run("show", "no-such-job")
    assert (r.code, r.out) == (1, "")
    assert r.err_lines == ["smartgen: job no-such-job not found"]

    r = await client.run("jobs", "--email", f"nobody{unique}@example.com", "--password", "wrong")
    assert (r.code, r.out) == (1, "")
    assert len(r.err_lines) == 1
    assert r.err_lines[0].startswith(f"smartgen: authentication refused by {server_url}")

    # The wait is bounded: a job due in 1 s cannot be awaited for 0.2 s.
    r = await client.run("generate", f"slow {unique}", "--timeout", "0.2")
    assert (r.code, r.out) == (1, "")
    assert r.err_lines[-1].startswith("smartgen: job ")
    assert "did not finish within 0.2s" in r.err_lines[-1]

    # A failed job: the job document on stdout (--json), one line on stderr.
    marker = f"[term-down-{unique}]"
    fake_llm.always(marker, Reply(status=500))
    r = await client.run("generate", f"doomed {marker}", "--json", "--timeout", "60")
    assert r.code == 1
    assert r.json()["status"] == "failed"
    assert len(r.err_lines) == 1 and "failed:" in r.err_lines[0]


async def test_server_down_prints_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = Client(tmp_path, url)
    for args in (["generate", "Sourdough", "--json"], ["jobs"], ["show", "abc"]):
        r = await client.run(*args)
        assert (r.code, r.out) == (1, "")
        assert r.err_lines == [
            f"smartgen: cannot reach smartgen at {url}: is it running? start it with `make run`"
        ]
    # Without --url: $SMARTGEN_URL, then PORT.
    r = await client.run("jobs", url=False, SMARTGEN_URL=url)
    assert r.code == 1 and f"at {url}:" in r.err
    r = await client.run("jobs", url=False, PORT=url.rsplit(":", 1)[1])
    assert r.code == 1 and f"at {url}:" in r.err
    assert not client.credentials_file.exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "Sourdough", "--type", "Poem"], "invalid choice: 'Poem'"),
        (["generate", "Sourdough", "--no-wait", "--save"], "--save needs the result"),
        (["generate", "Sourdough", "--timeout", "0"], "must be greater than 0"),
        (["jobs", "--limit", "0"], "must be greater than 0"),
        (["jobs", "--status", "done"], "invalid choice: 'done'"),
        (["jobs", "--url", "ftp://example.com"], "invalid URL 'ftp://example.com'"),
        (["show"], "the following arguments are required: JOB_ID"),
    ],
)
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    r = await Client(tmp_path, None).run(*args)
    assert (r.code, r.out) == (2, "")
    assert expected in r.err


async def test_socket_events_drive_the_wait(server_url: str, tmp_path: Path, unique: str) -> None:
    """The listener alone (no polling) sees the job through queued → processing → completed."""
    from smartgen.terminal.api import Api
    from smartgen.terminal.credentials import CredentialStore
    from smartgen.terminal.waiting import _close_socket, _listen

    api = Api(server_url, creds=CredentialStore(tmp_path / "credentials.json"))
    try:
        queued = await api.call(
            "POST",
            "/generate-content",
            body={"prompt": f"ev {unique}", "contentType": "Blog Post Outline"},
        )
        state = {"status": "queued"}
        seen: list[str] = []
        wake = asyncio.Event()
        sio = await _listen(api, queued["jobId"], state, wake)
        assert sio is not None and sio.connected
        try:
            async with asyncio.timeout(30):
                while state["status"] != "completed":
                    await wake.wait()
                    wake.clear()
                    seen.append(state["status"])
        finally:
            await _close_socket(sio)
        assert "processing" in seen and seen[-1] == "completed"
    finally:
        await api.aclose()


async def test_control_commands_cancel_run_now_and_retry(
    env: dict[str, str], processes: list[Process], tmp_path: Path, unique: str
) -> None:
    _, _, url = await start_system({**env, "GENERATION_DELAY_SECONDS": "3600"}, processes)
    client = Client(tmp_path, url)
    r = await client.run("generate", f"later {unique}", "--delay", "3600", "--no-wait", "--json")
    assert r.code == 0, r.err
    job_id = r.json()["jobId"]
    r = await client.run("cancel", job_id, "--json")
    assert r.code == 0, r.err
    assert r.json()["status"] == "cancelled"
    r = await client.run("cancel", job_id)
    assert r.code == 1 and r.err_lines[-1].startswith("smartgen: ") and "cancelled" in r.err
    r = await client.run("retry", job_id)
    assert r.code == 0, r.err
    assert r.out.startswith(f"Job {job_id} queued again")
    r = await client.run("run-now", job_id, "--json")
    assert r.code == 0, r.err
    r = await client.run("cancel", "no-such-job")
    assert r.code == 1 and r.err_lines == ["smartgen: job no-such-job not found"]
    # It ran at once and completed; its history shows the cancelled run.
    for _ in range(100):
        shown = (await client.run("show", job_id, "--json")).json()
        if shown["status"] == "completed":
            break
        await asyncio.sleep(0.2)
    assert shown["status"] == "completed"
    assert [h["status"] for h in shown["history"]] == ["cancelled"]


async def test_generate_with_a_delay_and_watch_follows_the_events(
    server_url: str, tmp_path: Path, unique: str
) -> None:
    client = Client(tmp_path, server_url)
    r = await client.run("generate", f"now {unique}", "--delay", "0", "--json")
    assert r.code == 0, r.err
    job = r.json()
    assert job["status"] == "completed"
    assert job["startedAt"] <= job["completedAt"]
    # `watch --after 0` replays the user's log from the start, one JSON document a line.
    r = await client.run("watch", "--after", "0", "--count", "3", "--json")
    assert r.code == 0, r.err
    frames = [json.loads(line) for line in r.out.splitlines()]
    assert [f["id"] for f in frames] == ["1", "2", "3"]
    assert frames[0]["event"] == "job_status" and frames[0]["data"]["status"] == "queued"
    assert all(f["data"]["jobId"] == job["jobId"] for f in frames)
    r = await client.run("watch", "--after", "0", "--count", "2")
    assert r.code == 0, r.err
    assert r.out.splitlines()[0].endswith(f"{job['jobId']}  queued")


async def test_the_listener_passes_on_the_text_as_it_is_written(
    env: dict[str, str], processes: list[Process], tmp_path: Path, fake_llm: FakeLLM, unique: str
) -> None:
    from smartgen.terminal.api import Api
    from smartgen.terminal.credentials import CredentialStore
    from smartgen.terminal.waiting import _close_socket, _listen

    marker = f"[tty-{unique}]"
    fake_llm.script(marker, [Reply(content=f"one two three four {marker}", chunk_delay=0.05)])
    # A second's delay: the listener is up well before the job starts.
    _, _, url = await start_system({**env, "GENERATION_DELAY_SECONDS": "1"}, processes)
    api = Api(url, creds=CredentialStore(tmp_path / "credentials.json"))
    written: list[tuple[str, bool]] = []
    try:
        state = {"status": "queued"}
        wake = asyncio.Event()
        queued_job = await api.call(
            "POST",
            "/generate-content",
            body={"prompt": f"x {marker}", "contentType": "Blog Post Outline"},
        )
        sio = await _listen(
            api, queued_job["jobId"], state, wake, lambda d, reset: written.append((d, reset))
        )
        try:
            async with asyncio.timeout(30):
                while state["status"] != "completed":
                    await wake.wait()
                    wake.clear()
        finally:
            await _close_socket(sio)
        job = await api.job(queued_job["jobId"])
    finally:
        await api.aclose()
    text = "".join(d for d, _ in written)
    assert text.strip() == job["generatedContent"]
    # The run's first piece starts the text; none after it does.
    assert len(written) >= 2
    assert [reset for _, reset in written] == [True] + [False] * (len(written) - 1)
