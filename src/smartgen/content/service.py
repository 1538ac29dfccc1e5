"""Saving a completed job into the permanent Content collection."""

from __future__ import annotations

import re
from uuid import UUID, uuid4

from smartgen.errors import Conflict, NotFound
from smartgen.generation.service import get_job
from smartgen.kit.times import utcnow
from smartgen.models import Content, Job, JobStatus
from smartgen.store.base import Store

_INLINE_MARKUP = re.compile(r"[*_`~]+")
TITLE_MAX = 120
# A default title is looked for in the text's beginning only: its cost stays the same
# whatever a model was led to write (the whole body was once searched by a backtracking
# regular expression, seconds of event loop on a crafted text).
TITLE_SCAN_CHARS = 16_384


def markdown_heading(line: str) -> str | None:
    """The text of an ATX heading line (`# Title`, `## Title ##`), else None. Plain string
    steps, linear in the line's length."""
    indent = len(line) - len(line.lstrip(" "))
    if indent > 3:
        return None
    rest = line[indent:]
    level = len(rest) - len(rest.lstrip("#"))
    if not 1 <= level <= 6:
        return None
    rest = rest[level:]
    if rest and not rest[0].isspace():
        return None  # "#hashtag" is not a heading
    text = rest.strip()
    # A closing sequence of #s counts only after a space ("# C#" keeps its #).
    closed = text.rstrip("#")
    if closed != text and (not closed or closed[-1].isspace()):
        text = closed.rstrip()
    return text or None


def default_title(body: str, prompt: str) -> str:
    """The content's first Markdown heading, else the prompt's first line, shortened."""
    text = None
    for line in body[:TITLE_SCAN_CHARS].splitlines():
        text = markdown_heading(line)
        if text:
            break
    if not text:
        text = (prompt[:TITLE_SCAN_CHARS].strip().splitlines() or ["Untitled"])[0]
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
    if title is None:
        # Saved before: that document, without working out a title again.
        existing = await store.contents.get_for_job(job.job_id, job.user_id)
        if existing is not None:
            return existing, False
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
