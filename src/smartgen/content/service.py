"""Saving a completed job into the permanent Content collection."""

from __future__ import annotations

import re
from uuid import UUID, uuid4

from smartgen.errors import Conflict, NotFound
from smartgen.generation.service import get_job
from smartgen.kit.times import utcnow
from smartgen.models import Content, Job, JobStatus
from smartgen.store.base import Store

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_INLINE_MARKUP = re.compile(r"[*_`~]+")
TITLE_MAX = 120


def default_title(body: str, prompt: str) -> str:
    """The content's first Markdown heading, else the prompt's first line, shortened."""
    match = _HEADING.search(body)
    text = match.group(1) if match else (prompt.strip().splitlines() or ["Untitled"])[0]
    text = " ".join(_INLINE_MARKUP.sub("", text).split()) or "Untitled"
    if len(text) > TITLE_MAX:
        text = text[: TITLE_MAX - 1].rsplit(" ", 1)[0].rstrip(" ,.;:-") + "…"
    return text


async def save_from_job(*, store: Store, job: Job, title: str | None) -> tuple[Content, bool]:
    """(content, created): saving the same job twice returns the first document."""
    if job.status != JobStatus.completed or not job.generated_content:
        raise Conflict(
            f"Only completed jobs can be saved; this job is {job.status.value}",
            code="job_not_completed",
        )
    content = Content(
        content_id=str(uuid4()),
        user_id=job.user_id,
        job_id=job.job_id,
        title=title or default_title(job.generated_content, job.prompt),
        body=job.generated_content,
        content_type=job.content_type,
        created_at=utcnow(),
        prompt=job.prompt,
        model=job.model,
    )
    return await store.contents.create_once(content)


async def save_job(
    *, store: Store, user_id: str, job_id: str, title: str | None
) -> tuple[Content, bool]:
    """Save the owner's completed job; (content, created)."""
    job = await get_job(store=store, user_id=user_id, job_id=job_id)
    return await save_from_job(store=store, job=job, title=title)


async def list_contents(*, store: Store, user_id: str, limit: int) -> list[Content]:
    return await store.contents.list_for_user(user_id, limit=limit)


async def get_content(*, store: Store, user_id: str, content_id: str) -> Content:
    try:
        content_id = str(UUID(content_id))
    except ValueError:
        raise NotFound("Content not found", code="content_not_found") from None
    content = await store.contents.get_for_user(content_id, user_id)
    if content is None:
        raise NotFound("Content not found", code="content_not_found")
    return content
