"""`smartgen watch`: the user's event stream (`GET /events`), followed live.

Server-sent events over one HTTP connection; when it drops (a restart, a network blip),
the client reconnects with `Last-Event-ID`, so it misses nothing the server's log still
holds and sees nothing twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from smartgen.terminal.api import printable_tree
from smartgen.terminal.errors import ClientError, Unreachable
from smartgen.terminal.output import STATUS_STYLE, Session, _excerpt, _when

RECONNECT_SECONDS = 1.0
MAX_RECONNECT_SECONDS = 15.0


async def _frames(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    frame: dict[str, Any] = {}
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if line.startswith("id:"):
            frame["id"] = line[3:].strip()
        elif line.startswith("event:"):
            frame["event"] = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and (data or frame):
            frame["data"] = printable_tree(json.loads("\n".join(data))) if data else None
            yield frame
            frame, data = {}, []


def describe(frame: dict[str, Any]) -> str:
    """One line for a person: when, what, which job, and its gist."""
    event, data = frame.get("event", "message"), frame.get("data") or {}
    job = str(data.get("jobId", ""))
    if event == "job_status":
        return f"{_when(data.get('at'))}  {job}  {data.get('status')}"
    if event == "job_progress":
        if data.get("reset"):
            return f"{'':19}  {job}  (starting again)"
        return f"{'':19}  {job}  +{len(data.get('delta') or '')} chars ({data.get('length')})"
    if event == "job_completed":
        return f"{_when(data.get('completedAt'))}  {job}  completed: " + _excerpt(
            data.get("generatedContent"), 60
        )
    if event == "job_failed":
        return f"{_when(data.get('failedAt'))}  {job}  failed: {data.get('error')}"
    if event == "resync":
        return "(events were missed: `smartgen jobs` shows where things stand)"
    return f"{event}: {json.dumps(data)[:80]}"


async def watch(session: Session, *, after: int | None, count: int | None) -> int:
    """Print the user's events until interrupted (or `count` events)."""
    api = session.api
    last = after
    seen = 0
    pause = RECONNECT_SECONDS
    while True:
        token = await api.ensure_token()
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last is not None:
            headers["Last-Event-ID"] = str(last)
        try:
            async with (
                httpx.AsyncClient(base_url=api.url, timeout=None) as http,
                http.stream("GET", "/events", headers=headers) as response,
            ):
                if response.status_code == 401:
                    await api.ensure_token(refused=token)
                    continue
                if response.status_code != 200:
                    await response.aread()
                    raise ClientError(f"the server refused the event stream: {response.text}")
                pause = RECONNECT_SECONDS
                async for frame in _frames(response):
                    if frame.get("id"):
                        last = int(frame["id"])
                    if session.json:
                        session.emit_line(frame)
                    else:
                        status = (frame.get("data") or {}).get("status", "")
                        session.out.print(describe(frame), style=STATUS_STYLE.get(str(status), ""))
                    seen += 1
                    if count is not None and seen >= count:
                        return 0
        except (httpx.TransportError, Unreachable):
            pass  # the server went away: reconnect where we left off
        if not session.json:
            session.err.print(f"(reconnecting in {pause:g}s)", style="dim")
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_RECONNECT_SECONDS)
