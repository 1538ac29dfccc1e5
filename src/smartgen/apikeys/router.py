"""/api-keys: personal API keys for programs. Managed with a login token only: a key
cannot create, list or delete keys."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from smartgen.api.deps import SessionsDep, SessionUser, StoreDep, rate_limit
from smartgen.apikeys import service
from smartgen.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyOut, key_created, key_out
from smartgen.errors import error_responses

router = APIRouter(
    prefix="/api-keys", tags=["api-keys"], responses=error_responses(401, 403, 429, 503)
)

create_limit = rate_limit(
    "api-keys",
    lambda s: (s.save_rate_limit, s.save_rate_window_seconds),
    per="user",
    fail_open=True,
)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(400, 413, 415, 422),
    dependencies=[create_limit],
)
async def create_api_key(body: ApiKeyCreate, user: SessionUser, store: StoreDep) -> ApiKeyCreated:
    """Create an API key with some scopes; the key (`sg_…`) is in this answer only."""
    key, secret = await service.create_key(
        store=store,
        user_id=user.user_id,
        name=body.name,
        scopes=list(body.scopes),
        expires_at=body.expiresAt,
    )
    return key_created(key, secret)


@router.get("")
async def list_api_keys(user: SessionUser, store: StoreDep) -> list[ApiKeyOut]:
    """The caller's API keys, newest first (never the keys themselves)."""
    return [key_out(k) for k in await service.list_keys(store=store, user_id=user.user_id)]


@router.delete("/{keyId}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def delete_api_key(
    keyId: str, user: SessionUser, store: StoreDep, sessions: SessionsDep
) -> Response:
    """Revoke an API key: refused at once by every API process."""
    await service.revoke_key(store=store, revocations=sessions, user_id=user.user_id, key_id=keyId)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
