"""Socket.IO floods (issue 21, item 7) against the API served by uvicorn on a loopback port:
Engine.IO sessions that never send CONNECT (raw polling and raw websocket), sockets per
user capped, `sync` rate-limited. Real python-socketio clients, raw HTTP and websockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import socketio
import websockets

from smartgen.config import Settings
from tests.conftest import ApiServer, register


@pytest.fixture(params=["true", "false"], ids=["compact-connections", "stock-connections"])
def env(request: pytest.FixtureRequest, env: dict[str, str]) -> dict[str, str]:
    """Each test on both kinds of per-connection objects (SOCKETIO_COMPACT_CONNECTIONS):
    the flood guards close sessions through Engine.IO's queue."""
    return {
        **env,
        "SOCKETIO_COMPACT_CONNECTIONS": request.param,
        "REGISTER_IP_RATE_LIMIT": "0",
        "SOCKETIO_CONNECT_TIMEOUT_SECONDS": "1",
        "SOCKETIO_MAX_SOCKETS_PER_USER": "3",
        "SOCKETIO_SYNC_RATE_LIMIT": "5",
    }


@pytest.fixture
async def user(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register(client)


@pytest.fixture
async def sockets() -> AsyncIterator[list[socketio.AsyncClient]]:
    made: list[socketio.AsyncClient] = []
    yield made
    for sio in made:
        with contextlib.suppress(Exception):
            await sio.disconnect()
        with contextlib.suppress(Exception):
            await sio.shutdown()


async def connect(
    api: ApiServer, token: str, made: list[socketio.AsyncClient]
) -> socketio.AsyncClient:
    sio = socketio.AsyncClient(reconnection=False)
    made.append(sio)
    refusals: list[Any] = []
    sio.on("connect_error", refusals.append)
    sio.refusals = refusals  # type: ignore[attr-defined]
    await sio.connect(api.url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    return sio


async def test_a_polling_session_without_connect_is_closed(client: httpx.AsyncClient) -> None:
    r = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert r.status_code == 200 and r.text.startswith("0"), r.text
    sid = json.loads(r.text[1:])["sid"]
    # Poll as a live client would (answering pings), never sending the Socket.IO CONNECT.
    while True:
        r = await client.get(
            "/socket.io/", params={"EIO": "4", "transport": "polling", "sid": sid}, timeout=60
        )
        if r.status_code != 200:
            break  # the session is gone
        packets = r.text.split("\x1e")
        if "1" in packets:
            break  # closed by the server
        if "2" in packets:
            await client.post(
                "/socket.io/",
                params={"EIO": "4", "transport": "polling", "sid": sid},
                content="3",
                headers={"Content-Type": "text/plain"},
            )
    r = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling", "sid": sid})
    assert r.status_code == 400  # no such session any more


async def test_a_websocket_without_connect_is_closed(api: ApiServer) -> None:
    url = api.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        opened = await ws.recv()
        assert isinstance(opened, str) and opened.startswith("0")
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:  # answer pings, ignore a close packet, never send "40"
                message = await ws.recv()
                if message == "2":
                    await ws.send("3")
    # The server closed the websocket itself (the loop above only ends that way).
    assert ws.state.name == "CLOSED"


async def test_a_refused_connect_does_not_keep_the_session(api: ApiServer) -> None:
    """CONNECT with a bad token is refused; the Engine.IO session then ends too."""
    url = api.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with websockets.connect(url) as ws:
        await ws.recv()
        await ws.send('40{"token":"not-a-token"}')
        refused = await ws.recv()
        assert isinstance(refused, str) and refused.startswith("44")
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                message = await ws.recv()
                if message == "2":
                    await ws.send("3")


async def test_sockets_per_user_are_capped(
    api: ApiServer,
    client: httpx.AsyncClient,
    user: dict[str, Any],
    sockets: list[socketio.AsyncClient],
) -> None:
    held = [await connect(api, user["token"], sockets) for _ in range(3)]
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect(api, user["token"], sockets)
    [refusal] = sockets[-1].refusals  # type: ignore[attr-defined]
    assert "Too many connections" in refusal["message"]
    assert "3 sockets per user" in refusal["message"]
    assert refusal["data"] == {"error": "too_many_sockets"}
    # Another user is not affected.
    other = await register(client)
    assert (await connect(api, other["token"], sockets)).connected
    # A socket that leaves gives its place back.
    await held[0].disconnect()
    while True:
        try:
            assert (await connect(api, user["token"], sockets)).connected
            break
        except socketio.exceptions.ConnectionError:
            await asyncio.sleep(0.1)  # the server has not seen the disconnect yet


async def test_sync_is_rate_limited_per_user(
    api: ApiServer, user: dict[str, Any], sockets: list[socketio.AsyncClient]
) -> None:
    first = await connect(api, user["token"], sockets)
    second = await connect(api, user["token"], sockets)
    answers = [await first.call("sync", {"afterSeq": 0}, timeout=10) for _ in range(4)]
    answers.append(await second.call("sync", {"since": 0}, timeout=10))
    assert all("error" not in a for a in answers), answers
    refused = await second.call("sync", {"afterSeq": 0}, timeout=10)
    assert refused["error"] == "rate_limited"
    assert "at most 5" in refused["message"]
    assert isinstance(refused["retryAfter"], int) and refused["retryAfter"] >= 1
    # The socket stays connected: only the call is refused.
    assert first.connected and second.connected


async def test_socket_counts_are_renewed_while_held_and_lapse_with_their_process(
    redis_server: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user count in Redis: a live process renews its sockets' entries; a dead
    one's lapse by themselves, so its users are not locked out."""
    from redis import asyncio as aioredis

    from smartgen.realtime import quota as quota_module
    from smartgen.realtime.quota import SocketQuota

    monkeypatch.setattr(quota_module, "SOCKET_ENTRY_SECONDS", 0.6)
    client = aioredis.Redis.from_url(redis_server.url)
    live = SocketQuota(client, prefix=f"t{unique}", cap=1)
    other = SocketQuota(client, prefix=f"t{unique}", cap=1)
    try:
        assert await live.take("u1", "s1")
        assert await live.take("u1", "s1")  # the same socket again: still one
        assert not await other.take("u1", "s2")
        await asyncio.sleep(1.0)  # past the entry's life: renewed meanwhile
        assert not await other.take("u1", "s2")
        await live.release("s1")
        assert await other.take("u1", "s2")
        await other.release("s2")
        # A process that dies holding a socket: its entry is no longer renewed.
        assert await live.take("u2", "s3")
        assert live._renewer is not None
        live._renewer.cancel()
        while True:  # once its entry lapses (correctness, not speed: no time bound)
            if await other.take("u2", "s4"):
                break
            await asyncio.sleep(0.1)
    finally:
        await live.close()
        await other.close()
        await client.delete(f"t{unique}:sockets:u1", f"t{unique}:sockets:u2")
        await client.aclose()


async def _handshake(client: httpx.AsyncClient, **headers: str) -> httpx.Response:
    return await client.get(
        "/socket.io/", params={"EIO": "4", "transport": "polling"}, headers=headers
    )


async def test_new_sessions_are_limited_per_address(settings: Settings) -> None:
    """Engine.IO handshakes carry no token: each address may open
    SOCKETIO_IP_SESSION_RATE_LIMIT new sessions per window, then 429 `rate_limited` with
    Retry-After, over polling and over a bare websocket alike; a session already open goes
    on, and another address (behind a trusted proxy) is counted on its own."""
    s = settings.model_copy(
        update={"socketio_ip_session_rate_limit": 3, "trusted_proxies": ["127.0.0.1/32"]}
    )
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        opened = [await _handshake(client) for _ in range(3)]
        assert [r.status_code for r in opened] == [200] * 3
        refused = await _handshake(client)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        url = api.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        with pytest.raises(websockets.InvalidStatus) as upgrade:
            async with websockets.connect(url):
                pass
        assert upgrade.value.response.status_code == 429
        # An open session's own requests are not handshakes.
        sid = json.loads(opened[0].text[1:])["sid"]
        r = await client.post(
            "/socket.io/",
            params={"EIO": "4", "transport": "polling", "sid": sid},
            content="3",
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 200, r.text
        # Another client behind the trusted proxy has its own count.
        other = await _handshake(client, **{"X-Forwarded-For": "203.0.113.7"})
        assert other.status_code == 200, other.text
        # The rest of the API is not counted here.
        assert (await client.get("/healthz")).status_code == 200


async def test_zero_turns_the_session_limit_off(settings: Settings) -> None:
    s = settings.model_copy(update={"socketio_ip_session_rate_limit": 0})
    async with ApiServer(s) as api, httpx.AsyncClient(base_url=api.url, timeout=10) as client:
        answers = [await _handshake(client) for _ in range(310)]  # past the default 300
    assert [r.status_code for r in answers] == [200] * 310
