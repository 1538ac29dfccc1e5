"""Waiting for a job: Socket.IO events wake the waiter early, but events are at most once,
so it also polls; the store's answer, never an event, ends the wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from smartgen.kit.text import printable
from smartgen.terminal.api import Api
from smartgen.terminal.errors import ClientError, Unreachable
from smartgen.terminal.output import Progress, Session

STATUSES = ("queued", "processing", "completed", "failed", "cancelled")
FINAL = frozenset({"completed", "failed", "cancelled"})
JOB_EVENTS = ("job_status", "job_completed", "job_failed")
POLL_SECONDS = 2.0  # fallback poll while no Socket.IO connection is up
POLL_SECONDS_LIVE = 5.0  # while connected: events wake us, the poll only covers lost ones
UNREACHABLE_GRACE = 30.0  # how long a wait tolerates the server being unreachable
WAIT_MARGIN = 300.0  # default --timeout: the scheduled delay plus this


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("smartgen.terminal.socketio")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        logger.setLevel(logging.CRITICAL)
    return logger


async def _listen(
    api: Api,
    job_id: str,
    state: dict[str, str],
    wake: asyncio.Event,
    on_text: Callable[[str, bool], None] | None = None,
) -> Any:
    """A Socket.IO connection whose job events for `job_id` wake the waiter (and whose
    `job_progress` events go to `on_text`); None when the server's Socket.IO cannot be
    reached (polling alone still finishes the wait)."""
    import socketio

    sio = socketio.AsyncClient(
        reconnection=True,
        reconnection_delay=1,
        reconnection_delay_max=5,
        logger=_quiet_logger(),
        engineio_logger=_quiet_logger(),
        handle_sigint=False,
    )

    async def on_event(data: Any = None) -> None:
        if isinstance(data, dict) and data.get("jobId") == job_id:
            if data.get("status") in STATUSES:
                state["status"] = str(data["status"])
            wake.set()

    async def on_connect() -> None:
        wake.set()  # (re)connected: events may have been missed, read the job again

    async def on_progress(data: Any = None) -> None:
        if on_text is not None and isinstance(data, dict) and data.get("jobId") == job_id:
            on_text(printable(str(data.get("delta") or "")), bool(data.get("reset")))

    for name in JOB_EVENTS:
        sio.on(name, on_event)
    sio.on("job_progress", on_progress)
    sio.on("connect", on_connect)
    try:
        await sio.connect(
            api.url,
            auth={"token": await api.ensure_token()},
            transports=["websocket"],
            wait_timeout=5,
        )
    except Exception:  # refused, not a Socket.IO server, network: poll instead
        await _close_socket(sio)
        return None
    return sio


async def _close_socket(sio: Any) -> None:
    if sio is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.disconnect(), 5)
    http = getattr(getattr(sio, "eio", None), "http", None)
    if http is not None and not http.closed:  # engine.io keeps an aiohttp session open
        with contextlib.suppress(Exception):
            await http.close()


async def wait_for_job(
    session: Session,
    queued: dict[str, Any],
    *,
    max_wait: float,
) -> dict[str, Any]:
    """Wait until the job is completed, failed or cancelled, by events and by polling; at
    most `max_wait` seconds. The text shows as it is written (on a terminal)."""
    api = session.api
    job_id = str(queued["jobId"])
    delay = float(queued.get("delaySeconds") or 0)
    started = time.monotonic()
    due, deadline = started + delay, started + max_wait
    state = {"status": str(queued.get("status", "queued"))}
    wake = asyncio.Event()
    progress = Progress(session, job_id=job_id, delay=delay, enabled=not session.json)
    sio = None
    try:
        sio = await _listen(
            api, job_id, state, wake, lambda delta, reset: progress.text(delta, reset=reset)
        )
        next_poll = 0.0  # read the job once the listener is up: nothing is missed before it
        unreachable_since: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_poll or wake.is_set():
                wake.clear()
                try:
                    job = await api.job(job_id)
                except Unreachable:
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > UNREACHABLE_GRACE:
                        raise
                else:
                    unreachable_since = None
                    state["status"] = str(job.get("status"))
                    if state["status"] in FINAL:
                        return job
                live = sio is not None and sio.connected
                next_poll = time.monotonic() + (POLL_SECONDS_LIVE if live else POLL_SECONDS)
            now = time.monotonic()
            if now >= deadline:
                raise ClientError(
                    f"job {job_id} did not finish within {max_wait:g}s (still {state['status']}):"
                    f" check later with `smartgen show {job_id}`"
                )
            progress.update(state["status"], now=now, due=due, started=started)
            pause = max(0.0, min(0.25, next_poll - now, deadline - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
    finally:
        progress.stop()
        await _close_socket(sio)
