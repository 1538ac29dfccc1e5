"""The attack sweep of issue 21: every attack class found by the outsider's probe, repeated
against a real system, one line each: held, or NOT HELD, with the figure behind it.

    .venv/bin/python bench/attack.py [--json FILE] [--only slow_clients,provider]

It starts its own system (harness.py): a private redis-server, an SQLite store in a
temporary directory, a hostile model provider (tests/fakellm.py's server, in this process,
scripted per prompt marker), one `smartgen api` and one `smartgen worker` process, with
short timeouts so the sweep takes a few minutes. Attackers and victims speak from
different loopback addresses (127.0.0.2, 127.0.0.3, …), as different hosts would.

Exit code 0 when every class held, 1 otherwise. One cohesive script (each check is a few
lines against the same system), hence past 400 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import (
    Cleanup,
    Proc,
    Redis,
    Smartgen,
    SqliteBackend,
    Workspace,
    log,
    run_main,
    smartgen_env,
)
from tests.fakellm import FakeLLM, Reply

KEY = "sk-or-v1-" + secrets.token_hex(32)  # the provider key the system is given
SECRET = secrets.token_hex(32)
ATTACK_ENV = {
    "OPENROUTER_KEY": KEY,
    "LOG_LEVEL": "debug",  # the access log on: what item 3 looks for
    "LLM_TIMEOUT_SECONDS": "5",
    "LLM_STREAM_MAX_SECONDS": "4",
    "LLM_RETRY_AFTER_MAX_SECONDS": "2",
    "JOB_BACKOFF_MS": "200",
    "REGISTER_IP_RATE_LIMIT": "5",
    "LOGIN_RATE_LIMIT": "5",
    "LOGIN_IP_RATE_LIMIT": "50",
    "HTTP_HEADER_TIMEOUT_SECONDS": "2",
    "HTTP_BODY_TIMEOUT_SECONDS": "2",
    "HTTP_MAX_HEADER_BYTES": "32768",
    "SOCKETIO_CONNECT_TIMEOUT_SECONDS": "2",
    "DB_POOL_SIZE": "2",
    # The defaults, which the other benchmarks set out of reach.
    "HTTP_MAX_CONNECTIONS": "2000",
    "SOCKETIO_MAX_SOCKETS_PER_USER": "20",
    "SOCKETIO_SYNC_RATE_LIMIT": "30",
    "SOCKETIO_IP_SESSION_RATE_LIMIT": "300",
}
CAP_SECONDS = 10.0  # how long a check waits for the server to close a connection


@dataclass
class Result:
    item: str
    attack: str
    held: bool
    figure: str


class System:
    """The running system and the attacker's tools."""

    def __init__(self, url: str, api: Proc, worker: Proc, llm: FakeLLM) -> None:
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        self.api = api
        self.worker = worker
        self.llm = llm
        self._hosts = iter(range(10, 250))

    def client(self, source: str | None = None, **kw: Any) -> httpx.AsyncClient:
        """An HTTP client speaking from its own loopback address (a host of its own)."""
        source = source or f"127.0.1.{next(self._hosts)}"
        transport = httpx.AsyncHTTPTransport(local_address=source)
        kw.setdefault("timeout", 60)
        return httpx.AsyncClient(base_url=self.url, transport=transport, **kw)

    async def user(self, password: str = "correct horse battery") -> dict[str, Any]:
        email = f"u-{uuid.uuid4().hex[:10]}@example.com"
        async with self.client() as c:
            r = await c.post("/auth/register", json={"email": email, "password": password})
        if r.status_code != 201:
            raise RuntimeError(f"registration failed: {r.status_code} {r.text[:200]}")
        body = r.json()
        token = body["token"]
        return {
            "email": email,
            "password": password,
            "token": token,
            "id": body["user"]["id"],
            "headers": {"Authorization": f"Bearer {token}"},
        }

    async def job(self, user: dict[str, Any], prompt: str) -> dict[str, Any]:
        """Queue a generation (no delay) and wait until it is final."""
        async with self.client() as c:
            r = await c.post(
                "/generate-content",
                json={"prompt": prompt, "contentType": "Blog Post Outline", "delaySeconds": 0},
                headers=user["headers"],
            )
            if r.status_code != 202:
                raise RuntimeError(f"queueing failed: {r.status_code} {r.text[:200]}")
            job_id = r.json()["jobId"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                job: dict[str, Any] = (
                    await c.get(f"/generate-content/{job_id}", headers=user["headers"])
                ).json()
                if job.get("status") in ("completed", "failed", "cancelled"):
                    return job
                await asyncio.sleep(0.1)
        raise RuntimeError(f"job {job_id} did not finish")

    async def raw(self, payload: bytes, *, trickle: bytes = b"", every: float = 0.5) -> str:
        """Send `payload` on a raw connection, then `trickle` every `every` s: what the
        server answered, and how long until it closed the connection (or 'open')."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.monotonic()

        async def drip() -> None:
            with contextlib.suppress(OSError):
                writer.write(payload)
                await writer.drain()
                while trickle:
                    await asyncio.sleep(every)
                    writer.write(trickle)
                    await writer.drain()

        task = asyncio.create_task(drip())
        data = b""
        try:
            async with asyncio.timeout(CAP_SECONDS):
                while chunk := await reader.read(65536):
                    data += chunk
            closed = f"closed after {time.monotonic() - started:.1f} s"
        except TimeoutError:
            closed = f"still open after {CAP_SECONDS:g} s"
        except ConnectionResetError:
            closed = f"reset after {time.monotonic() - started:.1f} s"
        finally:
            task.cancel()
            writer.close()
        status = data.split(b"\r\n", 1)[0].decode(errors="replace") if data else "no answer"
        return f"{status}; {closed}"


# --- the API's own attack classes (items 1-11) ----------------------------------------------
async def slow_save(s: System) -> Result:
    """Run last: on a system where it is not held, it stalls the API for a while."""
    marker = f"[a1-{uuid.uuid4().hex[:6]}]"
    s.llm.always(marker, Reply(content="# x" + " " * 1200 + "x"))  # backtracking: seconds
    user = await s.user()
    job = await s.job(user, f"titles {marker}")
    path = f"/generate-content/{job['jobId']}/save"
    async with s.client(timeout=20) as c:

        async def timed(call: Awaitable[httpx.Response]) -> tuple[float, int]:
            started = time.monotonic()
            try:
                status = (await call).status_code
            except httpx.TimeoutException:
                status = 0  # no answer within 20 s
            return time.monotonic() - started, status

        one, first = await timed(c.post(path, json={}, headers=user["headers"]))
        saves = [timed(c.post(path, json={}, headers=user["headers"])) for _ in range(10)]
        probes = [timed(c.get("/healthz")) for _ in range(5)]
        answers = await asyncio.gather(*saves, *probes)
    worst_health = max(seconds for seconds, _ in answers[10:])
    failed = sum(1 for _, status in answers if status == 0 or status >= 500)
    held = first in (200, 201) and one < 0.5 and worst_health < 1.0 and failed == 0
    return Result(
        "1",
        "slow default title on save",
        held,
        f"one save {one * 1000:.0f} ms; 10 concurrent saves: /healthz worst "
        f"{worst_health * 1000:.0f} ms, {failed} 5xx or unanswered in 20 s",
    )


async def spoofed_forwarded_for(s: System) -> Result:
    accepted = 0
    # From 127.0.0.1: uvicorn trusts its X-Forwarded-For (FORWARDED_ALLOW_IPS' default).
    async with s.client("127.0.0.1") as c:
        for i in range(12):
            spoof = f"10.9.{i}.1" if i % 2 else "x" * 5000
            r = await c.post(
                "/auth/register",
                json={"email": f"x-{uuid.uuid4().hex[:8]}@example.com", "password": "pw pw pw pw"},
                headers={"X-Forwarded-For": spoof},
            )
            accepted += r.status_code == 201
    limit = int(ATTACK_ENV["REGISTER_IP_RATE_LIMIT"])
    return Result(
        "2",
        "spoofed X-Forwarded-For",
        accepted <= limit,
        f"{accepted} of 12 registrations accepted from one address (limit {limit})",
    )


async def tokens_in_logs(s: System) -> Result:
    user = await s.user()
    async with s.client() as c:
        await c.get(
            "/socket.io/", params={"EIO": "4", "transport": "polling", "token": user["token"]}
        )
    await asyncio.sleep(0.5)
    found = s.api.output().count(user["token"])
    return Result("3", "bearer tokens in the log", found == 0, f"{found} log lines carry the token")


async def huge_exp(s: System) -> Result:
    user = await s.user()
    claims = jwt.decode(user["token"], options={"verify_signature": False})
    before = s.api.output().count("Traceback")
    statuses: list[int | str] = []
    for exp in (1e20, "9999999999"):
        token = jwt.encode({**claims, "exp": exp}, SECRET, algorithm="HS256")
        # A connection each: a server that fails mid-request may close the one it used.
        async with s.client() as c:
            try:
                r = await c.get("/generate-content", headers={"Authorization": f"Bearer {token}"})
                statuses.append(r.status_code)
            except httpx.HTTPError as exc:
                statuses.append(f"no answer ({type(exc).__name__})")
    tracebacks = s.api.output().count("Traceback") - before
    return Result(
        "4",
        "token with a huge or string exp",
        statuses == [401, 401] and tracebacks == 0,
        f"answers {statuses}, {tracebacks} tracebacks in the log",
    )


async def turns_race(s: System) -> Result:
    user = await s.user()
    before = s.api.output().count("Traceback")
    async with s.client(limits=httpx.Limits(max_connections=400)) as c:

        async def one() -> int:
            try:
                r = await c.get("/generate-content", headers=user["headers"], timeout=30)
                return r.status_code
            except httpx.HTTPError:
                return 0

        # Many at once on two database connections: waiters for a turn that time out are
        # the race's trigger (on a fast machine they may all be served in time).
        codes = await asyncio.gather(*(one() for _ in range(400)))
    errors = codes.count(500)
    # A request whose client gave up (its task cancelled while it waited for a turn) never
    # shows its 500 to anyone: the log does.
    await asyncio.sleep(1)
    tracebacks = s.api.output().count("Traceback") - before
    return Result(
        "5",
        "database turns race under load",
        errors == 0 and tracebacks == 0,
        f"400 concurrent reads with DB_POOL_SIZE=2: {errors} x 500, {codes.count(503)} x 503, "
        f"{codes.count(200)} x 200, {codes.count(0)} unanswered in 30 s; "
        f"{tracebacks} tracebacks in the log",
    )


async def slow_clients(s: System) -> list[Result]:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    post = (
        b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n{"
    )
    cases = [
        ("a client that sends nothing", await s.raw(b"")),
        ("headers one line a second", await s.raw(head, trickle=b"X-Slow: 1\r\n")),
        ("a body one byte a second", await s.raw(post, trickle=b" ")),
        ("a 1 MB header", await s.raw(head + b"X-Big: " + b"a" * 1_000_000)),
    ]
    out = [
        Result("6", name, "closed" in figure or "reset" in figure, figure) for name, figure in cases
    ]
    out[-1].held = out[-1].held and "431" in out[-1].figure
    return out


async def socketio_floods(s: System) -> list[Result]:
    import socketio
    import websockets

    results = []
    # Engine.IO sessions that never CONNECT: 200 by polling, one websocket answering pings.
    async with s.client() as c:
        opened = []
        for _ in range(200):
            r = await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
            opened.append(json.loads(r.text[1:])["sid"])
        await asyncio.sleep(float(ATTACK_ENV["SOCKETIO_CONNECT_TIMEOUT_SECONDS"]) + 1.5)
        alive = 0
        for sid in opened:
            # A noop packet: 200 while the session lives, 400 once it is gone.
            r = await c.post(
                "/socket.io/",
                params={"EIO": "4", "transport": "polling", "sid": sid},
                content="6",
                headers={"Content-Type": "text/plain"},
            )
            alive += r.status_code == 200
    ws_url = s.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    started = time.monotonic()
    closed = "still open"
    async with websockets.connect(ws_url) as ws:
        with contextlib.suppress(websockets.ConnectionClosed, TimeoutError):
            async with asyncio.timeout(CAP_SECONDS):
                while True:
                    if await ws.recv() == "2":
                        await ws.send("3")
        if ws.state.name == "CLOSED":
            closed = f"closed after {time.monotonic() - started:.1f} s"
    results.append(
        Result(
            "7",
            "Engine.IO sessions without CONNECT",
            alive == 0 and "closed" in closed,
            f"{alive} of 200 polling sessions still open; a websocket answering pings: {closed}",
        )
    )
    # Sockets per token, then sync calls.
    user = await s.user()
    clients = []
    accepted = 0
    for _ in range(25):
        sio = socketio.AsyncClient(reconnection=False)
        clients.append(sio)
        try:
            await sio.connect(s.url, auth={"token": user["token"]}, transports=["websocket"])
            accepted += 1
        except socketio.exceptions.ConnectionError:
            pass
    results.append(Result("7", "sockets per user", accepted <= 20, f"{accepted} of 25 accepted"))
    refused = 0
    if clients and clients[0].connected:
        for _ in range(100):
            answer = await clients[0].call("sync", {"afterSeq": 0}, timeout=10)
            refused += isinstance(answer, dict) and answer.get("error") == "rate_limited"
    results.append(Result("7", "sync flood", refused > 0, f"{refused} of 100 sync calls refused"))
    for sio in clients:
        with contextlib.suppress(Exception):
            await sio.disconnect()
    # New sessions from one address (a handshake carries no token yet).
    limit = int(ATTACK_ENV["SOCKETIO_IP_SESSION_RATE_LIMIT"])
    async with s.client() as c:
        codes = [
            (await c.get("/socket.io/", params={"EIO": "4", "transport": "polling"})).status_code
            for _ in range(limit + 50)
        ]
    opened, limited = codes.count(200), codes.count(429)
    results.append(
        Result(
            "7",
            "new Engine.IO sessions from one address",
            opened == limit and limited == 50,
            f"{opened} of {limit + 50} handshakes opened a session, {limited} refused (429)",
        )
    )
    return results


async def lockout(s: System) -> Result:
    owner = await s.user()
    async with s.client("127.0.0.4") as attacker:
        for _ in range(20):
            await attacker.post(
                "/auth/login", json={"email": owner["email"], "password": "wrong guess here"}
            )
    async with s.client("127.0.0.5") as c:
        r = await c.post(
            "/auth/login", json={"email": owner["email"], "password": owner["password"]}
        )
    return Result(
        "8",
        "lock a known account out",
        r.status_code == 200,
        f"owner's correct login after 20 failures from elsewhere: {r.status_code}",
    )


async def head_requests(s: System) -> Result:
    user = await s.user()
    job = await s.job(user, "head")
    async with s.client() as c:
        a = (await c.head("/healthz")).status_code
        b = (await c.head(f"/generate-content/{job['jobId']}", headers=user["headers"])).status_code
    return Result("9", "HEAD requests", a == b == 200, f"HEAD /healthz {a}, job status {b}")


async def smaller(s: System) -> list[Result]:
    out = []
    async with s.client() as c:
        ghost = jwt.encode(
            {"sub": uuid.uuid4().hex[:24], "iat": int(time.time()), "exp": int(time.time()) + 600},
            SECRET,
            algorithm="HS256",
        )
        r = await c.post(
            "/generate-content",
            json={"prompt": "ghost", "contentType": "Blog Post Outline"},
            headers={"Authorization": f"Bearer {ghost}"},
        )
        out.append(
            Result(
                "10",
                "token of a user that does not exist",
                r.status_code == 401,
                f"{r.status_code}",
            )
        )
        bodies = {"invalid UTF-8": b'{"email": "\xff\xfe"}', "deep nesting": b"[" * 100_000}
        for name, body in bodies.items():
            r = await c.post(
                "/auth/login", content=body, headers={"Content-Type": "application/json"}
            )
            code = (
                r.json().get("error")
                if r.headers.get("content-type", "").startswith("application/json")
                else None
            )
            out.append(
                Result("10", f"{name} body", code == "invalid_json", f"{r.status_code} {code}")
            )
        r = await c.get("/generate-content/", headers={"Host": "evil.example"})
        location = r.headers.get("location", "")
        out.append(
            Result(
                "10",
                "redirect to the Host header",
                "evil.example" not in location,
                f"{r.status_code} Location: {location or '-'}",
            )
        )
        email = f"n-{uuid.uuid4().hex[:8]}@example.com"
        await c.post("/auth/register", json={"email": email, "password": "\ufb01ne password 1"})
        r = await c.post("/auth/login", json={"email": email, "password": "fine password 1"})
        out.append(
            Result(
                "10",
                "password not NFKC-normalised",
                r.status_code == 200,
                f"login with the NFKC form: {r.status_code}",
            )
        )
        r = await c.get("/healthz")
        server = r.headers.get("server", "-")
        nosniff = r.headers.get("x-content-type-options", "-")
        out.append(
            Result(
                "10",
                "Server header, security headers",
                "uvicorn" not in server and nosniff == "nosniff",
                f"Server: {server}; X-Content-Type-Options: {nosniff}",
            )
        )
    return out


async def docs_offline(s: System) -> Result:
    async with s.client() as c:
        page = (await c.get("/docs")).text
        external = [w for w in page.split('"') if w.startswith(("http://", "https://", "//"))]
        scripts = [w for w in page.split('"') if w.endswith(".js")]
        loaded = [(await c.get(src)).status_code for src in scripts]
    held = not external and bool(scripts) and all(code == 200 for code in loaded)
    return Result(
        "11",
        "/docs without internet",
        held,
        f"external URLs {external or 'none'}; scripts {loaded}",
    )


# --- the model provider's attack classes (items 12-15) --------------------------------------
def sse_chunk(text: str, finish: str | None = None, model: str = "up/model") -> str:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
    if finish:
        choice["finish_reason"] = finish
    return "data: " + json.dumps({"model": model, "choices": [choice]}) + "\n\n"


def answer(content: str, **extra: Any) -> dict[str, Any]:
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        **extra,
    }


async def provider(s: System) -> list[Result]:
    user = await s.user()
    out: list[Result] = []

    async def run(name: str, reply: Reply | list[Reply]) -> dict[str, Any]:
        marker = f"[p-{name}-{uuid.uuid4().hex[:6]}]"
        if isinstance(reply, list):
            s.llm.script(marker, reply)
        else:
            s.llm.always(marker, reply)
        return await s.job(user, f"{name} {marker}")

    rss_before = s.worker.peak_rss_mb()
    bomb = json.dumps(answer("a" * 64_000_000)).encode()
    job = await run("gzip", Reply(raw_body=bomb, encoding="gzip"))
    grew = s.worker.peak_rss_mb() - rss_before
    out.append(
        Result(
            "12",
            "gzip bomb (64 MB in ~64 KB)",
            job["status"] == "failed" and grew < 200,
            f"{job['status']} after {job['attempts']} attempt(s): {job.get('error')}; "
            f"worker peak RSS +{grew:.0f} MB",
        )
    )

    job = await run("big", Reply(raw_body=json.dumps(answer("b" * 20_000_000)).encode()))
    out.append(
        Result(
            "13",
            "20 MB answer",
            job["status"] == "failed" and job["attempts"] == 1,
            f"{job['status']} after {job['attempts']} attempt(s)",
        )
    )
    job = await run(
        "fields",
        Reply(
            json_body=answer(
                "c" * 3_000_000,
                model="m" * 2_000_000,
                usage={"total_tokens": 5, "junk": "u" * 2_000_000},
            )
        ),
    )
    stored = len(json.dumps(job))
    out.append(
        Result(
            "13",
            "3 MB content, 2 MB model and usage",
            stored < 100_000 and job.get("finishReason") == "length",
            f"status read {stored} bytes; model {len(job.get('model') or '')} chars; "
            f"usage {job.get('usage')}",
        )
    )
    started = time.monotonic()
    job = await run("comments", Reply(sse_forever=": keep-alive\n\n", chunk_delay=0.05))
    out.append(
        Result(
            "13",
            "a stream kept alive by SSE comments",
            job["status"] == "failed",
            f"{job['status']} after {time.monotonic() - started:.1f} s: {job.get('error')}",
        )
    )

    forged = f"FORGED-{uuid.uuid4().hex[:6]}"
    line = f"2026-01-01 00:00:00,000 ERROR   smartgen.worker: {forged}"
    await run("forge", [Reply(status=503, json_body={"error": {"message": f"busy\n{line}"}})])
    lines = s.worker.output().splitlines()
    starts = sum(1 for entry in lines if entry.startswith("2026-01-01 00:00:00,000 ERROR"))
    out.append(
        Result(
            "14",
            "newline-forged log lines",
            starts == 0,
            f"{starts} forged lines in the worker's log",
        )
    )
    escapes = "\x1b[2J\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\link\x1b]8;;\x1b\\"
    job = await run(
        "esc", Reply(sse=[sse_chunk(f"# Title{escapes}\n\nbody", "stop"), "data: [DONE]\n\n"])
    )
    shown = await terminal_show(s, user, job["jobId"])
    out.append(
        Result(
            "14",
            "terminal escapes in model text",
            "\x1b" not in shown and "\x07" not in shown,
            f"{shown.count(chr(27))} escape characters on the terminal client's screen",
        )
    )

    job = await run("key", Reply(json_body=answer(f"key {KEY} and {KEY[9:40]}", model=f"m/{KEY}")))
    leaked = json.dumps(job).count(KEY[9:40])
    out.append(
        Result("15", "the key echoed in content and model", leaked == 0, f"{leaked} copies stored")
    )
    job = await run("nest", Reply(raw_body=b"[" * 10_000 + b"]" * 10_000))
    out.append(
        Result(
            "15",
            "10,000-level nesting",
            job["status"] == "failed"
            and job["attempts"] == 1
            and "malformed" in (job.get("error") or ""),
            f"{job['status']} after {job['attempts']} attempt(s)",
        )
    )
    job = await run(
        "surrogate", Reply(raw_body=b'{"choices":[{"message":{"content":"a \\ud800 b"}}]}')
    )
    out.append(
        Result(
            "15",
            "a lone surrogate",
            job["status"] == "failed"
            and job["attempts"] == 1
            and "malformed" in (job.get("error") or ""),
            f"{job['status']} after {job['attempts']} attempt(s)",
        )
    )
    started = time.monotonic()
    job = await run("retry", [Reply(status=429, headers={"Retry-After": "999999"})])
    waited = time.monotonic() - started
    lease = float(ATTACK_ENV["LLM_TIMEOUT_SECONDS"]) + 15
    out.append(
        Result(
            "15",
            "Retry-After: 999999",
            job["status"] == "completed" and waited < lease,
            f"{job['status']} after {waited:.1f} s (lease {lease:g} s)",
        )
    )
    job = await run("length", Reply(sse=[sse_chunk("cut", "length"), "data: [DONE]\n\n"]))
    out.append(
        Result(
            "15",
            'finish_reason "length"',
            job.get("finishReason") == "length",
            f"finishReason {job.get('finishReason')}",
        )
    )
    job = await run("codetrue", [Reply(json_body={"error": {"message": "odd", "code": True}})])
    out.append(
        Result(
            "15",
            "error.code: true",
            job["status"] == "completed",
            f"{job['status']} after {job['attempts']} attempt(s) (true is not HTTP 1)",
        )
    )
    return out


async def terminal_show(s: System, user: dict[str, Any], job_id: str) -> str:
    """What `smartgen-terminal show` prints for the job (its stdout, not a terminal)."""
    home = Path(os.environ.get("TMPDIR", "/tmp")) / f"attack-home-{uuid.uuid4().hex[:6]}"
    creds = home / "config" / "smartgen" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(json.dumps({s.url: {"email": user["email"], "token": user["token"]}}))
    creds.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "smartgen.terminal",
        "show",
        job_id,
        "--url",
        s.url,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode(errors="replace")


# --- the sweep ---------------------------------------------------------------------------------
async def sweep(cleanup: Cleanup, args: argparse.Namespace) -> int:
    ws = Workspace(cleanup)
    redis = Redis(ws)
    await redis.start()
    store = SqliteBackend(ws)
    llm = FakeLLM()
    cleanup.push("stop the fake LLM", llm.close)
    env = smartgen_env(
        redis_url=redis.url,
        store_env=await store.database("attack"),
        llm_base_url=llm.base_url,
        jwt_secret=SECRET,
        queue_prefix="attack",
        GENERATION_DELAY_SECONDS="0",
    )
    env.update(ATTACK_ENV)
    system = Smartgen(ws, env)
    api, url = await system.api()
    worker = await system.worker()
    s = System(url, api, worker, llm)
    log(f"system up at {url}; attacking")
    checks: list[Callable[[System], Awaitable[Result | list[Result]]]] = [
        spoofed_forwarded_for,
        tokens_in_logs,
        huge_exp,
        turns_race,
        slow_clients,
        socketio_floods,
        lockout,
        head_requests,
        smaller,
        docs_offline,
        provider,
        slow_save,  # last: where it is not held, the API stalls for a while
    ]
    if args.only:
        wanted = set(args.only.split(","))
        checks = [check for check in checks if check.__name__ in wanted]
    results: list[Result] = []
    for check in checks:
        try:
            got = await check(s)
        except Exception as exc:  # a check that breaks is reported, the sweep goes on
            got = Result(
                "?", check.__name__, False, f"check failed: {type(exc).__name__}: {exc}"[:300]
            )
        for result in got if isinstance(got, list) else [got]:
            results.append(result)
            log(f"{'held' if result.held else 'NOT HELD'}: {result.attack}")
    # One line per attack class, in the order.
    results.sort(key=lambda r: int(r.item) if r.item.isdigit() else 99)
    for result in results:
        verdict = "held    " if result.held else "NOT HELD"
        print(f"{result.item:>3}  {verdict}  {result.attack}: {result.figure}", flush=True)
    held = sum(r.held for r in results)
    print(f"\n{held} of {len(results)} attack classes held", flush=True)
    if args.json:
        report = json.dumps([asdict(r) for r in results], indent=2)
        await asyncio.to_thread(Path(args.json).write_text, report)
    return 0 if held == len(results) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--only", help="run these checks only (comma-separated names, e.g. slow_clients,provider)"
    )
    args = parser.parse_args()
    return run_main(lambda cleanup: sweep(cleanup, args))


if __name__ == "__main__":
    sys.exit(main())
