"""The client's commands: `generate`, `jobs`, `show` and `save`."""

from __future__ import annotations

import argparse
from typing import Any

from smartgen.terminal.api import job_path
from smartgen.terminal.errors import ClientError
from smartgen.terminal.output import STATUS_STYLE, Session, _excerpt, _text, _when, render_job
from smartgen.terminal.waiting import WAIT_MARGIN, wait_for_job


async def cmd_generate(session: Session, args: argparse.Namespace) -> int:
    save = bool(args.save or args.title)
    if args.no_wait and save:
        raise ClientError("--save needs the result: drop --no-wait", exit_code=2)
    queued = await session.api.call(
        "POST", "/generate-content", body={"prompt": args.prompt, "contentType": args.type}
    )
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


COMMANDS = {"generate": cmd_generate, "jobs": cmd_jobs, "show": cmd_show, "save": cmd_save}
