"""The client's commands: `generate`, `jobs`, `show`, `save`, job control, `variations`,
`usage`, `voices` and `watch`."""

from __future__ import annotations

import argparse
from typing import Any

from smartgen.terminal.api import job_path, voice_path
from smartgen.terminal.errors import ClientError
from smartgen.terminal.output import STATUS_STYLE, Session, _excerpt, _text, _when, render_job
from smartgen.terminal.waiting import WAIT_MARGIN, wait_for_job


async def cmd_generate(session: Session, args: argparse.Namespace) -> int:
    save = bool(args.save or args.title)
    if args.no_wait and save:
        raise ClientError("--save needs the result: drop --no-wait", exit_code=2)
    body: dict[str, Any] = {"prompt": args.prompt, "contentType": args.type}
    if args.delay is not None:
        body["delaySeconds"] = args.delay
    for name, key in STEERING:
        value = getattr(args, name, None)
        if value is not None:
            body[key] = value
    queued = await session.api.call("POST", "/generate-content", body=body)
    return await _follow(session, args, queued, save=save)


# (argument, request field): the steering options `generate` passes on as given.
STEERING = (
    ("tone", "tone"),
    ("length", "length"),
    ("language", "language"),
    ("audience", "audience"),
    ("keywords", "keywords"),
    ("model", "model"),
    ("temperature", "temperature"),
    ("voice", "voiceId"),
)


async def _follow(session: Session, args: argparse.Namespace, queued: Any, *, save: bool) -> int:
    """Wait for a queued job (unless --no-wait), print it, save it when asked."""
    session.job_id = str(queued["jobId"])
    if args.no_wait:
        if session.json:
            session.emit_json(queued)
        else:
            session.out.print(
                _text(
                    f"Queued job {queued['jobId']}, scheduled for {_when(queued['scheduledFor'])}."
                    f" Follow it with `smartgen show {queued['jobId']}`."
                )
            )
        return 0
    delay = float(queued.get("delaySeconds") or 0)
    timeout = args.timeout if args.timeout is not None else delay + WAIT_MARGIN
    job = await wait_for_job(session, queued, max_wait=timeout)
    if job["status"] == "failed":
        if session.json:
            session.emit_json(job)
        raise ClientError(f"job {job['jobId']} failed: {job.get('error') or 'unknown error'}")
    if job["status"] == "cancelled":
        if session.json:
            session.emit_json(job)
        raise ClientError(f"job {job['jobId']} was cancelled")
    saved = None
    if save:
        saved = await session.api.call(
            "POST",
            job_path(job["jobId"], "save"),
            body={"title": args.title} if args.title else None,
        )
    if session.json:
        session.emit_json({**job, "saved": saved} if saved is not None else job)
        return 0
    render_job(session, job)
    if saved is not None:
        session.out.print(_text(f'Saved as "{saved["title"]}" (content {saved["contentId"]})'))
    return 0


async def cmd_variations(session: Session, args: argparse.Namespace) -> int:
    queued = await _control(session, "POST", args.job_id, "variations")
    return await _follow(session, args, queued, save=False)


async def cmd_usage(session: Session, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"groupBy": args.by}
    if args.start:
        params["from"] = args.start
    if args.end:
        params["to"] = args.end
    usage = await session.api.call("GET", "/usage", params=params)
    if session.json:
        session.emit_json(usage)
        return 0
    from rich.table import Table
    from rich.text import Text

    out = session.out
    out.print(_text(f"Usage from {_when(usage['from'])} to {_when(usage['to'])}"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in (args.by, "Jobs", "Completed", "Failed", "Tokens", "Cost (USD)"):
        table.add_column(name, no_wrap=True, justify="left" if name == args.by else "right")
    for row in [*usage["groups"], {**usage["totals"], "key": "total"}]:
        table.add_row(
            Text(str(row["key"] if row["key"] is not None else "(no model yet)")),
            str(row["jobs"]),
            str(row["byStatus"].get("completed", 0)),
            str(row["byStatus"].get("failed", 0)),
            str(row["totalTokens"]),
            f"{row['cost']:.6f}",
        )
    out.print(table)
    budget = usage.get("budget")
    if budget:
        for name, unit in (("tokens", ""), ("cost", "$")):
            line = budget.get(name)
            if line:
                out.print(
                    _text(
                        f"Budget ({name}): {unit}{line['used']:g} of {unit}{line['limit']:g} used, "
                        f"{unit}{line['left']:g} left; resets {_when(budget['resetsAt'])}"
                    )
                )
    return 0


async def cmd_voices(session: Session, args: argparse.Namespace) -> int:
    action, target = args.action, args.target
    if action in ("add", "show", "delete") and not target:
        what = "a NAME" if action == "add" else "a VOICE_ID"
        raise ClientError(f"voices {action} needs {what}", exit_code=2)
    if action == "add":
        body = {"name": target, "description": args.description, "examples": args.examples or []}
        voice = await session.api.call("POST", "/voices", body=body)
        _report(session, voice, f'Voice "{voice["name"]}" created: {voice["voiceId"]}')
        return 0
    if action in ("show", "delete"):
        method = "GET" if action == "show" else "DELETE"
        try:
            voice = await session.api.call(method, voice_path(target))
        except ClientError as exc:
            if exc.status == 404:
                raise ClientError(f"voice {target} not found", status=404) from None
            raise
        if action == "delete":
            _report(session, {"voiceId": target, "deleted": True}, f"Voice {target} deleted.")
            return 0
        voices = [voice]
    else:
        voices = await session.api.call("GET", "/voices")
    if session.json:
        session.emit_json(voices if action == "list" else voices[0])
        return 0
    if not voices:
        session.out.print(_text('no brand voices yet: try `smartgen voices add "Name" …`'))
        return 0
    for voice in voices:
        session.out.print(_text(f"{voice['voiceId']}  {voice['name']}"))
        if voice.get("description"):
            session.out.print(_text(f"    {voice['description']}"))
        for example in voice.get("examples") or []:
            session.out.print(_text(f"    e.g. {_excerpt(example, 100)}"))
    return 0


async def cmd_jobs(session: Session, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.limit:
        params["limit"] = args.limit
    if args.status:
        params["status"] = args.status
    jobs = await session.api.call("GET", "/generate-content", params=params)
    if session.json:
        session.emit_json(jobs)
        return 0
    if not jobs:
        hint = "no jobs match" if args.status else 'no jobs yet: try `smartgen generate "…"`'
        session.out.print(_text(hint))
        return 0
    from rich.table import Table
    from rich.text import Text

    # The id stays whole (it is what `show` takes); the type goes first on a narrow
    # terminal, and the prompt takes what is left.
    with_type = session.out.width >= 110
    fixed = 36 + 2 + 10 + 2 + 11 + 2 + (20 + 2 if with_type else 0)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("ID", "Type", "Status", "Created", "Prompt"):
        if name != "Type" or with_type:
            table.add_column(name, no_wrap=True)
    for job in jobs:
        status = str(job.get("status"))
        row = [
            Text(str(job.get("jobId"))),
            Text(str(job.get("contentType"))),
            Text(status, style=STATUS_STYLE.get(status, "")),
            Text(_when(job.get("createdAt"), short=True)),
            Text(_excerpt(job.get("prompt"), max(12, session.out.width - fixed))),
        ]
        table.add_row(*(row if with_type else row[:1] + row[2:]))
    session.out.print(table)
    return 0


async def cmd_show(session: Session, args: argparse.Namespace) -> int:
    job = await session.api.job(args.job_id)
    if session.json:
        session.emit_json(job)
    else:
        render_job(session, job)
    return 0


async def cmd_save(session: Session, args: argparse.Namespace) -> int:
    await session.api.job(args.job_id)  # a clear "not found" before the save's own errors
    saved = await session.api.call(
        "POST",
        job_path(args.job_id, "save"),
        body={"title": args.title} if args.title else None,
    )
    if session.json:
        session.emit_json(saved)
    else:
        session.out.print(_text(f'Saved as "{saved["title"]}" (content {saved["contentId"]})'))
    return 0


async def cmd_cancel(session: Session, args: argparse.Namespace) -> int:
    job = await _control(session, "DELETE", args.job_id, None)
    _report(session, job, f"Job {job['jobId']} cancelled.")
    return 0


async def cmd_run_now(session: Session, args: argparse.Namespace) -> int:
    job = await _control(session, "POST", args.job_id, "run-now")
    _report(session, job, f"Job {job['jobId']} starts now.")
    return 0


async def cmd_retry(session: Session, args: argparse.Namespace) -> int:
    queued = await _control(session, "POST", args.job_id, "retry")
    _report(
        session,
        queued,
        f"Job {queued['jobId']} queued again, scheduled for {_when(queued['scheduledFor'])}.",
    )
    return 0


async def _control(session: Session, method: str, job_id: str, action: str | None) -> Any:
    try:
        return await session.api.call(method, job_path(job_id, *([action] if action else [])))
    except ClientError as exc:
        if exc.status == 404:
            raise ClientError(f"job {job_id} not found", status=404) from None
        raise


def _report(session: Session, document: Any, line: str) -> None:
    if session.json:
        session.emit_json(document)
    else:
        session.out.print(_text(line))


async def cmd_batch(session: Session, args: argparse.Namespace) -> int:
    from smartgen.terminal.batches import cmd_batch as run

    return await run(session, args)


async def cmd_batch_status(session: Session, args: argparse.Namespace) -> int:
    from smartgen.terminal.batches import cmd_batch_status as run

    return await run(session, args)


async def cmd_watch(session: Session, args: argparse.Namespace) -> int:
    from smartgen.terminal.watching import watch

    return await watch(session, after=args.after, count=args.count)


COMMANDS = {
    "generate": cmd_generate,
    "jobs": cmd_jobs,
    "show": cmd_show,
    "save": cmd_save,
    "cancel": cmd_cancel,
    "run-now": cmd_run_now,
    "retry": cmd_retry,
    "variations": cmd_variations,
    "usage": cmd_usage,
    "voices": cmd_voices,
    "watch": cmd_watch,
    "batch": cmd_batch,
    "batch-status": cmd_batch_status,
}
