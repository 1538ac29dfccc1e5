"""/contents: the permanent Content collection (what users saved), and saving a completed
job into it (`POST /generate-content/{jobId}/save`, documented with the generation routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from smartgen.api.deps import LibraryUser, ReadUser, StoreDep, rate_limit
from smartgen.content import service
from smartgen.content.schemas import ContentOut, SaveRequest, content_out
from smartgen.errors import error_responses

router = APIRouter(prefix="/contents", tags=["content"], responses=error_responses(401, 422, 503))
saving = APIRouter(
    prefix="/generate-content",
    tags=["generation"],
    responses=error_responses(400, 401, 413, 415, 422, 429, 503),
)

save_limit = rate_limit(
    "save",
    lambda s: (s.save_rate_limit, s.save_rate_window_seconds),
    per="user",
    fail_open=True,
)


@saving.post(
    "/{jobId}/save",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": ContentOut, "description": "Already saved: the existing document"},
        **error_responses(404, 409),
    },
    dependencies=[save_limit],
)
async def save_job(
    jobId: str,
    user: LibraryUser,
    store: StoreDep,
    response: Response,
    body: Annotated[SaveRequest | None, Body()] = None,
) -> ContentOut:
    """Save a completed job's content into the permanent Content collection."""
    content, created = await service.save_job(
        store=store, user_id=user.user_id, job_id=jobId, title=body.title if body else None
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return content_out(content)


@router.get("")
async def list_contents(
    user: ReadUser,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[ContentOut]:
    """The caller's saved contents, newest first."""
    items = await service.list_contents(store=store, user_id=user.user_id, limit=limit)
    return [content_out(c) for c in items]


@router.get("/{contentId}", responses=error_responses(404))
async def get_content(contentId: str, user: ReadUser, store: StoreDep) -> ContentOut:
    """One saved content of the caller's."""
    return content_out(
        await service.get_content(store=store, user_id=user.user_id, content_id=contentId)
    )
