"""GET /events: the caller's event log as server-sent events, live and resumable.

`id:` is each event's `seq`, `event:` its name, `data:` its payload (as on Socket.IO). A
client that reconnects with `Last-Event-ID` (EventSource does it by itself) or `?afterSeq=`
gets, in order, every event after that number the log still holds, then live ones; a
comment line every EVENTS_HEARTBEAT_SECONDS keeps proxies from closing an idle stream.
When the log no longer holds what a client asked for, it gets a `resync` event first
(`{"complete": false, "lastSeq": …}`): fetch `GET /generate-content` to catch up.

Each stream waits on a wake-up from the bus (`subscribers.py`) and then reads what is new
from the log, so what it sends never depends on the order or the completeness of pub/sub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from smartgen.api.deps import services
from smartgen.auth.keys import require_scope
from smartgen.auth.tokens import Principal, bearer_token
from smartgen.errors import ServiceUnavailable, ValidationFailed, error_responses
from smartgen.kit import jsoncodec
from smartgen.realtime.log import EventLog, LoggedEvent

log = logging.getLogger(__name__)

router = APIRouter(tags=["events"])
READ_LIMIT = 500


def _frame(event: LoggedEvent) -> bytes:
    data = jsoncodec.dumps(event.data)
    return f"id: {event.seq}\nevent: {event.event}\ndata: {data}\n\n".encode()


def _after(last_event_id: str | None, after_seq: int | None) -> int | None:
    value = last_event_id if last_event_id not in (None, "") else after_seq
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0:
        raise ValidationFailed(
            "Last-Event-ID must be a whole number of 0 or more (an event's id)",
            details=[{"field": "Last-Event-ID", "message": "not an event id"}],
        )
    return number


async def _principal(request: Request, token: str | None) -> Principal:
    credentials = services(request).credentials
    header = request.headers.get("authorization")
    # EventSource cannot set headers: a `token` query parameter is accepted too.
    principal = await credentials.verify(bearer_token(header) if header or not token else token)
    require_scope(principal, "read")
    return principal


async def _stream(
    log_: EventLog,
    user_id: str,
    after: int,
    news: asyncio.Event,
    heartbeat: float,
    *,
    resync: dict[str, Any] | None,
    ended: Callable[[], bool] = lambda: False,
) -> AsyncIterator[bytes]:
    if resync is not None:
        yield f"event: resync\ndata: {jsoncodec.dumps(resync)}\n\n".encode()
    yield b": connected\n\n"
    while True:
        if ended():  # the session was revoked (logout, password change, deletion)
            yield b'event: session_ended\ndata: {"message": "this session has ended"}\n\n'
            return
        news.clear()  # before reading: news arriving during the read is not lost
        try:
            replay = await log_.read(user_id, after, limit=READ_LIMIT)
        except (RedisError, OSError, TimeoutError):
            yield b": the event log is unavailable; retrying\n\n"
            replay = None
        if replay is not None:
            first = replay.events[0].seq if replay.events else replay.last_seq + 1
            if replay.last_seq > after and first > after + 1:  # the log lost some
                note = {"complete": False, "lastSeq": replay.last_seq}
                yield f"event: resync\ndata: {jsoncodec.dumps(note)}\n\n".encode()
                after = max(after, first - 1)
            for event in replay.events:
                yield _frame(event)
                after = event.seq
            if len(replay.events) >= READ_LIMIT:
                continue  # more waiting: read on at once
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(news.wait(), heartbeat)
            continue
        yield b": ping\n\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    openapi_extra={"security": [{"HTTPBearer": []}]},
    responses={
        200: {"description": "text/event-stream", "content": {"text/event-stream": {}}},
        **error_responses(401, 403, 422, 503),
    },
)
async def events(
    request: Request,
    token: Annotated[str | None, Query(description="For EventSource: the access token")] = None,
    after_seq: Annotated[int | None, Query(alias="afterSeq", ge=0)] = None,
    last_event_id: Annotated[
        str,
        Header(alias="Last-Event-ID", pattern=r"^[0-9]{0,18}$", description="Resume after it"),
    ] = "",
) -> StreamingResponse:
    """The caller's events as server-sent events (`curl -N`, `EventSource`), resumable
    with `Last-Event-ID` or `afterSeq`."""
    principal = await _principal(request, token)
    found = services(request)
    await found.sessions.check(principal)
    after = _after(last_event_id, after_seq)
    if not await found.listeners.ready():
        log.warning("events: the bus subscription is not ready; this stream may lag")
    try:
        last = await found.log.last_seq(principal.user_id)
    except (RedisError, OSError, TimeoutError) as exc:
        raise ServiceUnavailable(
            "The event log (Redis) is unavailable; try again shortly",
            code="events_unavailable",
        ) from exc
    resync = None
    if after is None:
        after = last  # live from now
    elif after > last:  # a number from before this Redis lost its data
        resync = {"complete": False, "lastSeq": last}
        after = last

    async def body() -> AsyncIterator[bytes]:
        with found.listeners.subscribe(principal.user_id) as news:
            async for chunk in _stream(
                found.log,
                principal.user_id,
                after,
                news,
                found.settings.events_heartbeat_seconds,
                resync=resync,
                ended=lambda: found.sessions.revoked_now(principal),
            ):
                yield chunk

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
