"""Saving a completed job into the permanent Content collection."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

from smartgen.errors import Conflict, NotFound, ValidationFailed
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
    """The newest `limit`, in the library's order (ties by content id, as pages have)."""
    return await store.contents.search(user_id, limit=limit)


def _content_id(content_id: str) -> str:
    """A content id as saving writes it (a UUID's canonical text); 404 for anything else."""
    try:
        return str(UUID(content_id))
    except ValueError:
        raise NotFound("Content not found", code="content_not_found") from None


async def get_content(*, store: Store, user_id: str, content_id: str) -> Content:
    content = await store.contents.get_for_user(_content_id(content_id), user_id)
    if content is None:
        raise NotFound("Content not found", code="content_not_found")
    return content


# --- the library: pages, search, edits ----------------------------------------------------
CURSOR_CHARS = 200
_CURSOR_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class LibraryPage:
    items: list[Content]
    next_cursor: str | None


def encode_cursor(content: Content) -> str:
    """The position after `content` in the newest-first order: base64url of
    `[createdAt in ms, contentId]`. Opaque to clients; a forged one can only move within
    the caller's own rows (every search is the caller's)."""
    ms = (content.created_at - _EPOCH) // _MS
    raw = json.dumps([ms, content.content_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """`encode_cursor`'s position back; 422 `invalid_cursor` for anything else."""
    try:
        if len(cursor) > CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        ms, content_id = json.loads(raw)
        if (
            type(ms) is not int
            or not 0 <= ms <= _MAX_MS
            or not isinstance(content_id, str)
            or not _CURSOR_ID.fullmatch(content_id)
        ):
            raise ValueError("not a position")
        at = _EPOCH + ms * _MS
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed(
            "cursor: not a cursor from this API (pass nextCursor as it came)",
            code="invalid_cursor",
            details=[{"field": "cursor", "message": "invalid cursor"}],
        ) from None
    return at, content_id


async def library_page(
    *,
    store: Store,
    user_id: str,
    limit: int,
    cursor: str | None = None,
    query: str | None = None,
    content_type: str | None = None,
    tag: str | None = None,
) -> LibraryPage:
    """A page of the caller's library, newest first, filtered and searched by the store."""
    before = None if cursor is None else decode_cursor(cursor)
    if tag is not None and "\x00" in tag:
        raise ValidationFailed(
            "tag: must not contain NUL (\\u0000) characters",
            details=[{"field": "tag", "message": "contains NUL"}],
        )
    # One more than asked: whether there is a next page, without a count.
    found = await store.contents.search(
        user_id,
        limit=limit + 1,
        query=query,
        content_type=content_type,
        tag=tag,
        before=before,
    )
    items = found[:limit]
    more = len(found) > limit
    return LibraryPage(items, encode_cursor(items[-1]) if more else None)


async def edit_content(
    *,
    store: Store,
    user_id: str,
    content_id: str,
    title: str | None = None,
    body: str | None = None,
    tags: list[str] | None = None,
) -> Content:
    """Change the owner's content (the search index follows); 404 for anyone else's."""
    content = await store.contents.update(
        _content_id(content_id), user_id, at=utcnow(), title=title, body=body, tags=tags
    )
    if content is None:
        raise NotFound("Content not found", code="content_not_found")
    return content


async def delete_content(*, store: Store, user_id: str, content_id: str) -> None:
    if not await store.contents.delete(_content_id(content_id), user_id):
        raise NotFound("Content not found", code="content_not_found")


EXPORT_PAGE = 100


async def export_contents(*, store: Store, user_id: str) -> AsyncIterator[list[Content]]:
    """The caller's library newest first (the order it is listed in), a page at a time,
    never all of it at once. Each page starts from the last one's position, not from a
    row, so an edit or a deletion meanwhile neither repeats nor loses the rest."""
    before = None
    while page := await store.contents.search(user_id, limit=EXPORT_PAGE, before=before):
        yield page
        if len(page) < EXPORT_PAGE:
            return
        before = (page[-1].created_at, page[-1].content_id)
