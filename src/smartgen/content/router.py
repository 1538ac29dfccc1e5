"""/contents: the permanent Content collection (what users saved), and saving a completed
job into it (`POST /generate-content/{jobId}/save`, documented with the generation routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from starlette.convertors import Convertor, register_url_convertor

from smartgen.api.deps import GenerateUser, LibraryUser, ReadUser, StoreDep, rate_limit
from smartgen.content import export, feedback, service
from smartgen.content.schemas import (
    ContentOut,
    ContentPage,
    ContentPatch,
    FeedbackRequest,
    FeedbackResponse,
    SaveRequest,
    content_out,
)
from smartgen.errors import error_responses
from smartgen.kit.times import iso_ms
from smartgen.models import ContentType

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
# The library's export shares the account export's budget (one bucket: both read a
# whole library).
export_limit = rate_limit(
    "export", lambda s: (s.save_rate_limit, s.save_rate_window_seconds), per="user", fail_open=True
)
edit_limit = rate_limit(
    "library-edit",
    lambda s: (s.save_rate_limit, s.save_rate_window_seconds),
    per="user",
    fail_open=True,
)
PAGE_PARAMETERS = ("limit", "cursor", "q", "contentType", "tag")


class ContentIdConvertor(Convertor[str]):
    """A content id in a path: anything but `export`, so `/contents/export` is only the
    export (its `Allow` names GET and HEAD, not the PATCH and DELETE of a content)."""

    regex = "(?!export$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("content_id", ContentIdConvertor())
CONTENT = "/{contentId:content_id}"


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


@saving.post("/{jobId}/feedback", responses=error_responses(404, 409), dependencies=[edit_limit])
async def rate_job(
    jobId: str, body: FeedbackRequest, user: GenerateUser, store: StoreDep
) -> FeedbackResponse:
    """Like or dislike one of your completed jobs (a second rating replaces the first)."""
    rated = await feedback.rate_job(
        store=store, user_id=user.user_id, job_id=jobId, rating=body.rating, comment=body.comment
    )
    return FeedbackResponse(
        jobId=rated.job_id,
        rating=rated.rating,
        comment=rated.comment,
        updatedAt=iso_ms(rated.updated_at),
    )


@saving.delete(
    "/{jobId}/feedback",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404),
    dependencies=[edit_limit],
)
async def unrate_job(jobId: str, user: GenerateUser, store: StoreDep) -> Response:
    """Remove your rating of a job."""
    await feedback.unrate_job(store=store, user_id=user.user_id, job_id=jobId)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "",
    responses={
        200: {
            "description": "Without any of limit, cursor, q, contentType, tag: the newest 50 "
            "as a plain array (as before). With any of them: a page, "
            "`{items, nextCursor}`",
        },
    },
)
async def list_contents(
    request: Request,
    user: ReadUser,
    store: StoreDep,
    limit: Annotated[int | None, Query(ge=1, le=100, description="Page size (20)")] = None,
    cursor: Annotated[
        str | None, Query(max_length=service.CURSOR_CHARS, description="nextCursor")
    ] = None,
    q: Annotated[
        str | None,
        Query(
            max_length=500,
            description="Full-text search over title and body: every word (letters and "
            "digits; punctuation and operators are ignored), whole words, any case; newest "
            "first",
        ),
    ] = None,
    contentType: ContentType | None = None,
    tag: Annotated[str | None, Query(min_length=1, max_length=40, description="Exact")] = None,
) -> list[ContentOut] | ContentPage:
    """The caller's saved contents, newest first: searched, filtered and paged."""
    if not any(name in request.query_params for name in PAGE_PARAMETERS):
        items = await service.list_contents(store=store, user_id=user.user_id, limit=50)
        return [content_out(c) for c in items]
    page = await service.library_page(
        store=store,
        user_id=user.user_id,
        limit=limit or 20,
        cursor=cursor,
        query=q if q and q.strip() else None,  # a cleared search box: no search
        content_type=contentType,
        tag=tag,
    )
    return ContentPage(items=[content_out(c) for c in page.items], nextCursor=page.next_cursor)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The caller's library, newest first, as a file: CSV (columns "
            + ",".join(export.CSV_COLUMNS)
            + "; tags joined by `;`), JSON lines (one content per line) or one Markdown "
            "document (a `# title` section per content). Streamed.",
            "content": {media: {} for media in export.MEDIA_TYPES.values()},
        },
        **error_responses(429),
    },
    dependencies=[export_limit],
)
async def export_contents(
    user: ReadUser, store: StoreDep, format: export.ExportFormat = "jsonl"
) -> StreamingResponse:
    """Download the caller's library as CSV, JSON lines or Markdown (streamed)."""
    pages = service.export_contents(store=store, user_id=user.user_id)
    return StreamingResponse(
        export.export_chunks(pages, format),
        media_type=export.MEDIA_TYPES[format],
        headers={
            "Content-Disposition": (
                f'attachment; filename="smartgen-contents.{export.EXTENSIONS[format]}"'
            ),
            "Cache-Control": "no-store",
        },
    )


@router.get(CONTENT, responses=error_responses(404))
async def get_content(contentId: str, user: ReadUser, store: StoreDep) -> ContentOut:
    """One saved content of the caller's."""
    return content_out(
        await service.get_content(store=store, user_id=user.user_id, content_id=contentId)
    )


@router.patch(
    CONTENT,
    responses=error_responses(400, 404, 413, 415, 429),
    dependencies=[edit_limit],
)
async def edit_content(
    contentId: str, body: ContentPatch, user: LibraryUser, store: StoreDep
) -> ContentOut:
    """Change the title, body or tags of one of the caller's saved contents."""
    content = await service.edit_content(
        store=store,
        user_id=user.user_id,
        content_id=contentId,
        title=body.title,
        body=body.body,
        tags=body.tags,
    )
    return content_out(content)


@router.delete(
    CONTENT,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 429),
    dependencies=[edit_limit],
)
async def delete_content(contentId: str, user: LibraryUser, store: StoreDep) -> Response:
    """Delete one of the caller's saved contents."""
    await service.delete_content(store=store, user_id=user.user_id, content_id=contentId)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
