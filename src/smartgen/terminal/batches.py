"""`smartgen batch FILE`: submit a CSV or JSON Lines file as a server-side batch, follow it
with a progress bar, then download its results (one row per input row)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from smartgen.terminal.errors import ClientError
from smartgen.terminal.output import Session, _text

POLL_SECONDS = 1.0
SHOWN_REJECTIONS = 10


def _kind(path: Path) -> str:
    return "application/x-ndjson" if path.suffix.lower() in (".jsonl", ".ndjson") else "text/csv"


def batch_path(batch_id: str, *rest: str) -> str:
    if batch_id.strip(".") == "":
        raise ClientError(f"batch {batch_id} not found", status=404)
    return "/".join(("/batches", quote(str(batch_id), safe=""), *rest))


async def cmd_batch(session: Session, args: argparse.Namespace) -> int:
    source = Path(args.file)
    try:
        data = await asyncio.to_thread(source.read_bytes)
    except OSError as exc:
        raise ClientError(f"cannot read {source}: {exc.strerror or exc}", exit_code=2) from None
    form = {} if args.delay is None else {"delaySeconds": f"{args.delay:g}"}
    created: dict[str, Any] = await session.api.call(
        "POST", "/batches", files={"file": (source.name, data, _kind(source))}, data=form
    )
    batch_id = str(created["batchId"])
    if not session.json:
        rejected = created.get("rejected") or []
        session.err.print(
            _text(
                f"Batch {batch_id}: {created['accepted']} of {created['total']} rows queued"
                + (f", {len(rejected)} rejected" if rejected else "")
            )
        )
        for entry in rejected[:SHOWN_REJECTIONS]:
            session.err.print(_text(f"  row {entry['row']}: {entry['error']}"))
        if len(rejected) > SHOWN_REJECTIONS:
            session.err.print(_text(f"  … and {len(rejected) - SHOWN_REJECTIONS} more"))
    if not (args.wait or args.output):
        if session.json:
            session.emit_json(created)
        else:
            session.out.print(_text(f"{batch_id}  (follow it: smartgen batch-status {batch_id})"))
        return 0
    state = await _follow(session, batch_id, int(created["accepted"]), wait_for=args.timeout)
    target = Path(args.output) if args.output else source.with_name(f"{source.stem}-results.csv")
    fmt = "jsonl" if target.suffix.lower() in (".jsonl", ".ndjson") else "csv"
    await session.api.download(batch_path(batch_id, "results"), target, params={"format": fmt})
    if session.json:
        session.emit_json({**state, "resultsFile": str(target)})
    else:
        counts = state["counts"]
        session.out.print(
            _text(
                f"Batch {batch_id} {state['status']}: {counts['completed']} completed, "
                f"{counts['failed']} failed, {counts['cancelled']} cancelled; "
                f"results in {target}"
            )
        )
    return 0 if state["status"] == "completed" and not state["counts"]["failed"] else 1


async def _follow(
    session: Session, batch_id: str, accepted: int, *, wait_for: float | None
) -> dict[str, Any]:
    """Poll the batch until it ends (at most `wait_for` seconds), with a progress bar on
    stderr (none with --json)."""
    deadline = None if wait_for is None else time.monotonic() + wait_for
    progress: Any = None
    task: Any = None
    if not session.json:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            console=session.err,
        )
        task = progress.add_task("batch", total=max(accepted, 1), note="")
        progress.start()
    try:
        while True:
            state: dict[str, Any] = await session.api.call("GET", batch_path(batch_id))
            counts = state["counts"]
            done = counts["completed"] + counts["failed"] + counts["cancelled"]
            if progress is not None:
                note = f"{counts['processing']} running, {counts['failed']} failed"
                progress.update(task, completed=done, note=note)
            if state["status"] != "running":
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise ClientError(
                    f"batch {batch_id} still running after {wait_for:g}s; it goes on on the "
                    f"server: smartgen batch-status {batch_id}"
                )
            await asyncio.sleep(POLL_SECONDS)
    finally:
        if progress is not None:
            progress.stop()


async def cmd_batch_status(session: Session, args: argparse.Namespace) -> int:
    try:
        state: dict[str, Any] = await session.api.call("GET", batch_path(args.batch_id))
    except ClientError as exc:
        if exc.status == 404:
            raise ClientError(f"batch {args.batch_id} not found", status=404) from None
        raise
    if session.json:
        session.emit_json(state)
        return 0
    counts = state["counts"]
    session.out.print(
        _text(
            f"Batch {state['batchId']} {state['status']}: {round(100 * state['progress'])} % "
            f"({counts['completed']} completed, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled, {counts['processing']} running, "
            f"{counts['queued'] + counts['waiting']} queued); cost ${state['costUsd']:.6f}"
        )
    )
    return 0
