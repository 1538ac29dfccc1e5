"""/contents: the permanent Content collection (what users saved)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from smartgen.content import service
from smartgen.content.schemas import ContentOut, content_out
from smartgen.deps import CurrentCaller
from smartgen.errors import error_responses

router = APIRouter(prefix="/contents", tags=["content"], responses=error_responses(401, 422, 503))


@router.get("")
async def list_contents(
    caller: CurrentCaller,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[ContentOut]:
    """The caller's saved contents, newest first."""
    items = await caller.rt.store.contents.list_for_user(caller.user_id, limit=limit)
    return [content_out(c) for c in items]


@router.get("/{contentId}", responses=error_responses(404))
async def get_content(contentId: str, caller: CurrentCaller) -> ContentOut:
    """One saved content of the caller's."""
    return content_out(
        await service.get_content(
            store=caller.rt.store, user_id=caller.user_id, content_id=contentId
        )
    )
