"""Webhooks: the address rules that keep them from reaching inside the network (unit
tests with a resolver the test controls), Standard Webhooks signatures checked by the
`standardwebhooks` package, the API's refusals over a real API server with the default
settings, and the whole path over real `smartgen api` and `worker` processes: a program
holding only an API key registers endpoints, its jobs end, a real receiver on loopback
that fails its first attempts still gets every event (signed, with the same `webhook-id`
on each retry), each attempt is logged, a redelivery and a ping arrive, an endpoint
that keeps failing is disabled and its owner told."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from smartgen.config import Settings
from smartgen.kit.outbound import UrlRefused, check_url
from smartgen.webhooks.sender import WebhookSender
from smartgen.webhooks.signing import new_secret, signed_headers
from tests.conftest import ApiServer, FakeLLM, Process, register, start_system
from tests.fakellm import Reply

WAIT = 30.0

# --- the address rules ------------------------------------------------------------------

DNS = {
    "public.example": ["93.184.216.34"],
    "v6.example": ["2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example": ["10.1.2.3"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
    "meta.example": ["169.254.169.254"],
    "mapped.example": ["::ffff:192.168.0.1"],
}


async def resolve(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("Name or service not known")
    return DNS[host]


async def verdict(url: str, *, private: bool = False, http: bool = False) -> str:
    try:
        checked = await check_url(url, allow_http=http, allow_private=private, resolve=resolve)
    except UrlRefused as refused:
        return "refused: " + refused.reason
    return "ok " + ",".join(checked.addresses)


# (URL, refused by default, refused with private networks allowed)
ALWAYS = "always"
CASES = [
    ("https://public.example/hook?a=1", None, None),
    ("https://93.184.216.34/", None, None),
    ("https://v6.example/", None, None),
    ("https://127.0.0.1/", "loopback", None),
    ("https://127.1.2.3:8443/", "loopback", None),
    ("https://localhost./", "does not resolve", "does not resolve"),
    ("https://2130706433/", "loopback", None),  # decimal 127.0.0.1
    ("https://0177.0.0.1/", "loopback", None),  # octal
    ("https://0x7f.1/", "loopback", None),  # hexadecimal, short form
    ("https://0x7f000001/", "loopback", None),
    ("https://[::1]/", "loopback", None),
    ("https://[::ffff:127.0.0.1]/", "loopback", None),  # IPv4-mapped
    ("https://[::ffff:7f00:1]/", "loopback", None),
    ("https://[64:ff9b::7f00:1]/", "loopback", None),  # NAT64
    ("https://[2002:7f00:1::]/", "loopback", None),  # 6to4
    ("https://10.0.0.1/", "private", None),
    ("https://172.16.5.4/", "private", None),
    ("https://192.168.1.1/", "private", None),
    ("https://100.64.0.1/", "private", None),  # carrier-grade NAT
    ("https://[fc00::1]/", "private", None),  # unique-local
    ("https://[fd12:3456::1]/", "private", None),
    ("https://0.0.0.0/", "unspecified", None),
    ("https://[::]/", "unspecified", None),
    ("https://224.0.0.1/", "multicast", None),
    ("https://[ff02::1]/", "multicast", None),
    ("https://240.0.0.1/", "private or reserved", None),
    ("https://internal.example/", "private", None),  # a name resolving inside
    ("https://mixed.example/", "loopback", None),  # one bad address is enough
    ("https://mapped.example/", "private", None),
    ("https://169.254.169.254/latest/meta-data/", ALWAYS, ALWAYS),
    ("https://2852039166/", ALWAYS, ALWAYS),  # decimal 169.254.169.254
    ("https://0251.0376.0251.0376/", ALWAYS, ALWAYS),  # octal
    ("https://[::ffff:169.254.169.254]/", ALWAYS, ALWAYS),
    ("https://[2002:a9fe:a9fe::]/", ALWAYS, ALWAYS),  # 6to4 of the metadata address
    ("https://meta.example/", ALWAYS, ALWAYS),
    ("https://[fe80::1]/", ALWAYS, ALWAYS),
    ("https://[fd00:ec2::254]/", ALWAYS, ALWAYS),
    ("https://100.100.100.200/", ALWAYS, ALWAYS),
    ("https://nowhere.example/", "does not resolve", "does not resolve"),
    ("http://public.example/", "https", "https"),
    ("ftp://public.example/", "https://", "https://"),
    ("https://user:pw@public.example/", "user name", "user name"),
    ("https:///path", "no host", "no host"),
    ("https://public.example:99999/", "malformed", "malformed"),
    ("https://public.example/a b", "spaces", "spaces"),
    ("https://public.example/" + "a" * 2000, "longer", "longer"),
    ("https://999.1.1.1/", "not a valid IP", "not a valid IP"),
    ("", "empty", "empty"),
]


@pytest.mark.parametrize(("url", "by_default", "with_private"), CASES)
async def test_address_rules(url: str, by_default: str | None, with_private: str | None) -> None:
    for private, expected in ((False, by_default), (True, with_private)):
        found = await verdict(url, private=private)
        if expected is None:
            assert found.startswith("ok "), (url, private, found)
        elif expected == ALWAYS:
            assert found.startswith("refused: ") and "metadata" in found, (url, private, found)
        else:
            assert found.startswith("refused: ") and expected in found, (url, private, found)


async def test_plain_http_only_when_allowed() -> None:
    assert (await verdict("http://public.example/")).startswith("refused")
    assert await verdict("http://public.example/", http=True) == "ok 93.184.216.34"
    assert (await verdict("http://127.0.0.1:9/", http=True)).startswith("refused")
    assert await verdict("http://127.0.0.1:9/", http=True, private=True) == "ok 127.0.0.1"


def test_signatures_verify_with_standardwebhooks() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"job.completed","timestamp":"2030-01-01T00:00:00.000Z","data":{"a":1}}'
    headers = signed_headers(secret, "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"1}", b"2}"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_2"})


async def test_the_sender_connects_to_the_checked_address_only(receiver: Receiver) -> None:
    port = int(receiver.url.rsplit(":", 1)[1])
    names = {"hooks.test": ["127.0.0.1"]}

    async def local(host: str, _port: int) -> list[str]:
        return names[host]

    def sender(private: bool, timeout: float = 5) -> WebhookSender:
        return WebhookSender(timeout=timeout, allow_http=True, allow_private=private, resolve=local)

    body = b'{"type":"ping"}'
    open_one, closed_one, slow_one = sender(True), sender(False), sender(True, timeout=0.5)
    try:
        # The name is resolved by the sender, the request goes to that address with the
        # name in Host.
        answer = await open_one.send(f"http://hooks.test:{port}/in", {"x-test": "1"}, body)
        assert (answer.status_code, answer.ok, answer.error) == (204, True, None)
        got = receiver.at("/in")[-1]
        assert (got.headers["host"], got.headers["x-test"], got.body) == (
            f"hooks.test:{port}", "1", body,
        )  # fmt: skip
        # The same name, now resolving to a loopback address that is not allowed (DNS
        # rebinding after registration): refused before any connection.
        before = len(receiver.received)
        answer = await closed_one.send(f"http://hooks.test:{port}/in", {}, body)
        assert answer.status_code is None and "loopback" in (answer.error or "")
        assert len(receiver.received) == before
        # No redirect followed; at most 1 KB read; a slow receiver times out.
        answer = await open_one.send(f"{receiver.url}/redirect", {}, body)
        assert (answer.status_code, answer.ok) == (302, False)
        assert receiver.at("/elsewhere") == []
        answer = await open_one.send(f"{receiver.url}/big", {}, body)
        assert answer.ok and answer.body == "y" * 1024
        answer = await slow_one.send(f"{receiver.url}/slow", {}, body)
        assert answer.status_code is None and "no answer within 0.5 s" in (answer.error or "")
        answer = await open_one.send("http://127.0.0.1:1/", {}, body)  # nobody listens
        assert answer.status_code is None and answer.error
    finally:
        for one in (open_one, closed_one, slow_one):
            await one.close()


# --- the API's refusals, with the default settings ---------------------------------------


async def test_webhook_routes_refuse_what_they_must(settings: Settings, fake_llm: FakeLLM) -> None:
    capped = settings.model_copy(update={"webhook_max_per_user": 2})
    async with ApiServer(capped) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as c:
        alice, bob = await register(c), await register(c)
        h = alice["headers"]
        assert (await c.get("/webhooks")).status_code == 401
        for url, why in (
            ("https://127.0.0.1/hook", "loopback"),
            ("https://169.254.169.254/latest/meta-data/", "metadata"),
            ("https://[::ffff:10.0.0.1]/", "private"),
            ("http://93.184.216.34/", "https"),
        ):
            r = await c.post("/webhooks", json={"url": url, "events": ["job.completed"]}, headers=h)
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "webhook_url_refused" and why in r.json()["message"]
        for body in (
            {"url": "https://93.184.216.34/", "events": []},
            {"url": "https://93.184.216.34/", "events": ["job.started"]},
            {"url": "https://93.184.216.34/"},
            {"url": "https://93.184.216.34/", "events": ["job.failed"], "secret": "mine"},
            {"url": "https://93.184.216.34/", "events": ["job.failed"], "description": "x" * 501},
            {"url": "", "events": ["job.failed"]},
        ):
            r = await c.post("/webhooks", json=body, headers=h)
            assert (r.status_code, r.json()["error"]) == (422, "validation_error"), body

        made = []
        for _ in range(2):
            r = await c.post(
                "/webhooks",
                json={"url": "https://93.184.216.34/in", "events": ["job.failed", "job.failed"]},
                headers=h,
            )
            assert r.status_code == 201, r.text
            made.append(r.json())
        assert made[0]["secret"].startswith("whsec_") and made[0]["events"] == ["job.failed"]
        r = await c.post(
            "/webhooks", json={"url": "https://93.184.216.34/", "events": ["job.failed"]}, headers=h
        )
        assert (r.status_code, r.json()["error"]) == (429, "too_many_webhooks")
        listed = (await c.get("/webhooks", headers=h)).json()
        assert [w["id"] for w in listed] == [made[1]["id"], made[0]["id"]]
        assert "secret" not in listed[0] and made[0]["secret"] not in json.dumps(listed)

        hook = made[0]["id"]
        r = await c.patch(f"/webhooks/{hook}", json={"url": "https://10.0.0.1/"}, headers=h)
        assert (r.status_code, r.json()["error"]) == (422, "webhook_url_refused")
        r = await c.patch(f"/webhooks/{hook}", json={"enabled": False, "events": ["job.cancelled"]},
                          headers=h)  # fmt: skip
        assert r.status_code == 200 and r.json()["enabled"] is False
        assert r.json()["events"] == ["job.cancelled"]
        # Another user's webhook, or a made-up id: 404 on every route.
        for method, path, body in (
            ("GET", f"/webhooks/{hook}", None),
            ("PATCH", f"/webhooks/{hook}", {"enabled": True}),
            ("DELETE", f"/webhooks/{hook}", None),
            ("POST", f"/webhooks/{hook}/test", None),
            ("GET", f"/webhooks/{hook}/deliveries", None),
            ("POST", f"/webhooks/{hook}/deliveries/{hook}/redeliver", None),
        ):
            r = await c.request(method, path, json=body, headers=bob["headers"])
            assert (r.status_code, r.json()["error"]) == (404, "webhook_not_found"), path
        for bad in ("nope", "00000000-0000-0000-0000-000000000000"):
            assert (await c.get(f"/webhooks/{bad}", headers=h)).status_code == 404
        r = await c.post(f"/webhooks/{hook}/deliveries/nope/redeliver", headers=h)
        assert (r.status_code, r.json()["error"]) == (404, "delivery_not_found")
        assert (await c.get("/webhooks", headers=bob["headers"])).json() == []

        # A job's own webhookUrl: the same rules, and a default secret to sign with.
        job = {"prompt": "Bread", "contentType": "Product Description", "delaySeconds": 600}
        r = await c.post(
            "/generate-content", json={**job, "webhookUrl": "https://169.254.169.254/"}, headers=h
        )
        assert (r.status_code, r.json()["error"]) == (422, "webhook_url_refused")
        assert r.json()["details"][0]["field"] == "webhookUrl"
        r = await c.post(
            "/generate-content", json={**job, "webhookUrl": "https://93.184.216.34/"}, headers=h
        )
        assert (r.status_code, r.json()["error"]) == (409, "webhook_secret_missing")
        r = await c.get("/webhooks/secret", headers=h)
        assert r.status_code == 200 and r.json()["secret"].startswith("whsec_")
        r = await c.get("/webhooks/secret", headers=h)
        assert (r.status_code, r.json()["error"]) == (409, "webhook_secret_revealed")
        # The secret's path is no webhook's: its Allow header names its own methods.
        r = await c.patch("/webhooks/secret", json={}, headers=h)
        assert (r.status_code, r.headers["allow"]) == (405, "GET, HEAD")
        r = await c.post("/webhooks/secret/rotate", headers=h)
        assert r.status_code == 200 and r.json()["secret"].startswith("whsec_")
        r = await c.post(
            "/generate-content", json={**job, "webhookUrl": "https://93.184.216.34/"}, headers=h
        )
        assert r.status_code == 202, r.text
        shown = (await c.get(f"/generate-content/{r.json()['jobId']}", headers=h)).json()
        assert shown["webhookUrl"] == "https://93.184.216.34/"
        assert "webhookUrl" not in (shown.get("options") or {})

        # Scopes: a key needs `webhooks` for these routes.
        r = await c.post("/api-keys", json={"name": "r", "scopes": ["read"]}, headers=h)
        reader = {"Authorization": f"Bearer {r.json()['key']}"}
        r = await c.get("/webhooks", headers=reader)
        assert (r.status_code, r.json()["error"]) == (403, "insufficient_scope")

        assert (await c.delete(f"/webhooks/{hook}", headers=h)).status_code == 204
        assert (await c.delete(f"/webhooks/{hook}", headers=h)).status_code == 404


# --- over real processes -----------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class QuietServer(ThreadingHTTPServer):
    """A sender that hangs up mid-request (its timeout, its 1 KB read) is expected here:
    not a traceback on the test's output."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class Receiver:
    """A real HTTP server on loopback: `/flaky/…` answers 500 (with a 5 KB body) to the
    first two requests of each webhook-id, then 204; `/down` always 503; `/redirect` 302;
    `/slow` after 1.5 s; `/big` 100 KB; anything else 204."""

    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver.lock:
                    receiver.received.append(Received(self.path, headers, body, time.time()))
                    seen = sum(
                        1 for r in receiver.received
                        if r.headers.get("webhook-id") == headers.get("webhook-id")
                    )  # fmt: skip
                if self.path == "/down":
                    self._answer(503, b"down")
                elif self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", "/elsewhere")
                    self.send_header("content-length", "0")
                    self.end_headers()
                elif self.path == "/slow":
                    time.sleep(1.5)
                    self._answer(204, b"")
                elif self.path == "/big":
                    self._answer(200, b"y" * 100_000)
                elif self.path.startswith("/flaky") and seen <= 2:
                    self._answer(500, b"x" * 5000)
                else:
                    self._answer(204, b"")

            def _answer(self, code: int, body: bytes) -> None:
                try:
                    self.send_response(code)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender read its 1 KB, or gave up waiting, and hung up

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    found.start()
    yield found
    found.close()


async def until(check: Any, what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


def events_of(received: list[Received], secret: str) -> list[dict[str, Any]]:
    """Each request's event, its signature checked by standardwebhooks."""
    return [Webhook(secret).verify(r.body, r.headers) for r in received]


async def test_every_event_reaches_a_receiver_that_fails_first(
    env: dict[str, str],
    processes: list[Process],
    receiver: Receiver,
    fake_llm: FakeLLM,
    unique: str,
) -> None:
    system = {
        **env,
        "WEBHOOK_ALLOW_HTTP": "true",
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true",
        "WEBHOOK_RETRY_DELAYS_SECONDS": "1,1,2",
        "WEBHOOK_DISABLE_AFTER_DAYS": str(3.5 / 86400),
        "JOB_ATTEMPTS": "1",
    }
    fake_llm.always(f"[broken-{unique}]", Reply(status=400))
    _, _, url = await start_system(system, processes)
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        user = await register(c)
        # The program holds an API key only.
        r = await c.post(
            "/api-keys",
            json={"name": "cms", "scopes": ["generate", "read", "webhooks"]},
            headers=user["headers"],
        )
        key = r.json()["key"]
        h = {"Authorization": f"Bearer {key}"}
        r = await c.post(
            "/webhooks",
            json={
                "url": receiver.url + "/flaky/hook",
                "events": ["job.completed", "job.failed", "job.cancelled"],
                "description": "CMS",
            },
            headers=h,
        )
        assert r.status_code == 201, r.text
        flaky, flaky_secret = r.json()["id"], r.json()["secret"]
        r = await c.post(
            "/webhooks", json={"url": receiver.url + "/down", "events": ["job.completed"]},
            headers=h,
        )  # fmt: skip
        down = r.json()["id"]
        default_secret = (await c.get("/webhooks/secret", headers=h)).json()["secret"]

        job = {"contentType": "Product Description", "delaySeconds": 0}
        r = await c.post(
            "/generate-content",
            json={**job, "prompt": "Rye bread", "webhookUrl": receiver.url + "/flaky/job"},
            headers=h,
        )
        assert r.status_code == 202, r.text
        completed = r.json()["jobId"]
        r = await c.post(
            "/generate-content", json={**job, "prompt": f"[broken-{unique}] x"}, headers=h
        )
        failed = r.json()["jobId"]
        r = await c.post("/generate-content", json={**job, "delaySeconds": 600, "prompt": "Later"},
                         headers=h)  # fmt: skip
        cancelled = r.json()["jobId"]
        assert (await c.delete(f"/generate-content/{cancelled}", headers=h)).status_code == 200

        # Every event arrives: three failed tries and a success each, signed.
        wanted = {("job.completed", completed), ("job.failed", failed),
                  ("job.cancelled", cancelled)}  # fmt: skip

        async def all_arrived() -> bool:
            ok = [r for r in receiver.at("/flaky/hook") if _succeeded(receiver, r)]
            got = {(e["type"], e["data"]["jobId"]) for e in events_of(ok, flaky_secret)}
            return got >= wanted

        await until(all_arrived, "every event at the flaky endpoint")
        hook_requests = receiver.at("/flaky/hook")
        events = events_of(hook_requests, flaky_secret)
        by_id: dict[str, list[Received]] = {}
        for request in hook_requests:
            by_id.setdefault(request.headers["webhook-id"], []).append(request)
        assert len(by_id) == 3
        for tries in by_id.values():
            assert len(tries) == 3  # two 500s, then the success: the same webhook-id
            assert len({t.body for t in tries}) == 1  # the same body every time
            stamps = [int(t.headers["webhook-timestamp"]) for t in tries]
            assert stamps == sorted(stamps) and abs(stamps[-1] - time.time()) < 60
            assert tries[1].at - tries[0].at >= 0.9 and tries[2].at - tries[1].at >= 0.9
        by_type = {e["type"]: e for e in events}
        assert by_type["job.completed"]["data"]["status"] == "completed"
        assert by_type["job.completed"]["data"]["generatedContent"]
        assert by_type["job.failed"]["data"]["status"] == "failed"
        assert by_type["job.cancelled"]["data"]["status"] == "cancelled"
        assert set(by_type["job.completed"]) == {"type", "timestamp", "data"}

        # The job's own URL, signed with the default secret.
        await until(
            lambda: _true(any(_succeeded(receiver, r) for r in receiver.at("/flaky/job"))),
            "the job's own webhookUrl",
        )
        own = events_of(receiver.at("/flaky/job"), default_secret)
        assert {(e["type"], e["data"]["jobId"]) for e in own} == {("job.completed", completed)}
        with pytest.raises(WebhookVerificationError):
            events_of(receiver.at("/flaky/job"), flaky_secret)

        # Each attempt is logged.
        r = await c.get(f"/webhooks/{flaky}/deliveries", headers=h)
        attempts = r.json()
        assert len(attempts) == 9
        failures = [a for a in attempts if a["status"] == "failed"]
        assert len(failures) == 6 and all(a["responseCode"] == 500 for a in failures)
        assert all(len(a["responseBody"]) == 1024 and a["nextAttemptAt"] for a in failures)
        successes = [a for a in attempts if a["status"] == "succeeded"]
        assert [a["attempt"] for a in successes] == [3, 3, 3]
        assert all(a["responseCode"] == 204 and a["durationMs"] >= 0 for a in successes)
        assert all(a["nextAttemptAt"] is None for a in successes)

        # A redelivery: the same message again, at once.
        delivery = successes[0]["deliveryId"]
        first_id = next(
            r.headers["webhook-id"]
            for r in hook_requests
            if r.headers["webhook-id"].endswith(delivery.replace("-", ""))
        )
        r = await c.post(f"/webhooks/{flaky}/deliveries/{delivery}/redeliver", headers=h)
        assert r.status_code == 202, r.text
        await until(
            lambda: _true(
                sum(q.headers["webhook-id"] == first_id for q in receiver.at("/flaky/hook")) == 4
            ),
            "the redelivery",
        )
        # A ping to one endpoint: it succeeds at its third try, like the rest.
        r = await c.post(f"/webhooks/{flaky}/test", headers=h)
        assert (r.status_code, r.json()["event"]) == (202, "ping")

        async def pinged() -> bool:
            ok = [q for q in receiver.at("/flaky/hook") if _succeeded(receiver, q)]
            return any(e["type"] == "ping" for e in events_of(ok, flaky_secret))

        await until(pinged, "the ping")

        # The endpoint that never answers well: tried per the schedule, then disabled,
        # and its owner told.
        async def disabled() -> dict[str, Any] | None:
            found = (await c.get(f"/webhooks/{down}", headers=h)).json()
            return None if found["enabled"] else found

        endpoint = await until(disabled, "the failing endpoint disabled")
        assert endpoint["failingSince"]
        tries = receiver.at("/down")
        assert len(tries) == 4  # the first attempt and the three retries
        assert len({t.headers["webhook-id"] for t in tries}) == 1
        async with c.stream("GET", "/events", params={"token": key, "afterSeq": 0}) as stream:
            told = await asyncio.wait_for(_event(stream, "webhook_disabled"), WAIT)
        assert told["webhookId"] == down
        flaky_now = (await c.get(f"/webhooks/{flaky}", headers=h)).json()
        assert flaky_now["enabled"] and flaky_now["failingSince"] is None


def _succeeded(receiver: Receiver, request: Received) -> bool:
    """Whether the receiver answered this request 204 (the third of its webhook-id)."""
    with receiver.lock:
        same = [r for r in receiver.received if r.headers.get("webhook-id")
                == request.headers.get("webhook-id")]  # fmt: skip
    return same.index(request) >= 2


async def _event(stream: httpx.Response, name: str) -> dict[str, Any]:
    event = ""
    async for line in stream.aiter_lines():
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: ") and event == name:
            return dict(json.loads(line[len("data: ") :]))
    raise AssertionError(f"the stream ended without {name}")


async def _true(value: bool) -> bool:
    return value


async def test_the_sweep_queues_a_delivery_whose_message_was_lost(settings: Settings) -> None:
    """A delivery written while the queue did not answer is still due: the worker's sweep
    puts its attempt on the delivery queue (once, however often it runs)."""
    from bullmq import Queue

    from smartgen.kit.times import utcnow
    from smartgen.models import WebhookDelivery
    from smartgen.queue.webhooks import BullWebhookQueue, webhook_queue_name
    from smartgen.redis_clients import redis_client
    from smartgen.store import open_store
    from smartgen.webhooks.tasks import WebhookTask

    store = open_store(settings)
    await store.init()
    queue = BullWebhookQueue(settings, redis_client(settings, "request"))
    reader = Queue(
        webhook_queue_name(settings),
        {"connection": redis_client(settings, "request"), "prefix": settings.queue_prefix},
    )
    sender = WebhookSender(timeout=1, allow_http=False, allow_private=False)
    try:
        at = utcnow()
        lost = WebhookDelivery(
            delivery_id=str(uuid.uuid4()), user_id="u1", webhook_id=None,
            url="https://93.184.216.34/", event="job.completed", payload={}, status="pending",
            attempts=0, created_at=at, updated_at=at, message_id="msg_lost", next_attempt_at=at,
        )  # fmt: skip
        assert await store.webhooks.create_delivery(lost)
        task = WebhookTask(
            store=store,
            sender=sender,
            queue=queue,
            notifier=None,
            settings=settings,  # type: ignore[arg-type]
        )
        assert await task.sweep(grace_seconds=0) == 1
        assert await task.sweep(grace_seconds=0) == 1  # still pending: offered again
        message = await reader.getJob(f"{lost.delivery_id}-1")
        assert message is not None and message.data == {
            "deliveryId": lost.delivery_id,
            "attempt": 1,
        }
        assert await reader.getJobCounts("waiting", "delayed") == {"waiting": 1, "delayed": 0}
        # Not yet overdue by the grace: left alone.
        assert await task.sweep(grace_seconds=60) == 0
    finally:
        await sender.close()
        await queue.close()
        await reader.close()
        await store.close()
