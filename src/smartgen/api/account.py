"""/auth account routes that reach across domains: log out, change the password, delete
the account (its jobs, contents and queued work too), export it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response, status
from fastapi.responses import StreamingResponse

from smartgen.api.deps import (
    HashingDep,
    HistoryDep,
    QueueDep,
    RefreshDep,
    SessionsDep,
    SessionUser,
    StoreDep,
    TokensDep,
    rate_limit,
)
from smartgen.apikeys.schemas import key_out
from smartgen.auth import service
from smartgen.auth.router import RefreshCookie, clear_refresh_cookie, token_response
from smartgen.auth.schemas import PasswordChange, PasswordConfirmation, TokenResponse, user_out
from smartgen.content.schemas import content_out
from smartgen.errors import error_responses
from smartgen.generation.schemas import job_out
from smartgen.kit import jsoncodec
from smartgen.kit.times import iso_ms, utcnow
from smartgen.voices.schemas import voice_out
from smartgen.webhooks.schemas import webhook_out

router = APIRouter(prefix="/auth", tags=["auth"], responses=error_responses(401, 429, 503))

# Password checks cost argon2 time: as many as logins allow, per user.
confirm_limit = rate_limit(
    "password-check",
    lambda s: (s.login_rate_limit, s.login_rate_window_seconds),
    per="user",
    fail_open=True,
)
export_limit = rate_limit(
    "export", lambda s: (s.save_rate_limit, s.save_rate_window_seconds), per="user", fail_open=True
)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
async def logout(
    request: Request,
    user: SessionUser,
    sessions: SessionsDep,
    refresh: RefreshDep,
    cookie: RefreshCookie = None,
) -> Response:
    """End this token's session at once, in every API process (its sockets and event
    streams are closed), and the web console session of its refresh cookie; the user's
    other sessions go on."""
    await service.log_out(
        revocations=sessions, principal=user, refresh=refresh, refresh_token=cookie
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    if cookie is not None:
        clear_refresh_cookie(response, request)
    return response


@router.post(
    "/password",
    responses=error_responses(400, 404, 413, 415, 422),
    dependencies=[confirm_limit],
)
async def change_password(
    body: PasswordChange,
    user: SessionUser,
    store: StoreDep,
    tokens: TokensDep,
    hashing: HashingDep,
    sessions: SessionsDep,
) -> TokenResponse:
    """Change the password (the current one is required): every session so far ends,
    this answer carries a fresh token."""
    session = await service.change_password(
        store=store,
        tokens=tokens,
        slots=hashing,
        revocations=sessions,
        user_id=user.user_id,
        current=body.currentPassword,
        new=body.newPassword,
    )
    return token_response(session)


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(400, 404, 413, 415, 422),
    dependencies=[confirm_limit],
)
async def delete_account(
    body: Annotated[PasswordConfirmation, Body()],
    user: SessionUser,
    store: StoreDep,
    queue: QueueDep,
    hashing: HashingDep,
    sessions: SessionsDep,
    history: HistoryDep,
) -> Response:
    """Delete the account and everything it owns (jobs, saved contents, its event log;
    queued and running work is cancelled); answers once all of it is gone. Needs the
    password."""
    await service.delete_account(
        store=store,
        queue=queue,
        slots=hashing,
        revocations=sessions,
        history=history,
        user_id=user.user_id,
        password=body.password,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/me/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The account, its jobs, saved contents, brand voices, API keys and "
            'webhooks (never a key or a secret), as one JSON document (`{"user", "jobs": '
            '[...], "contents": [...], "voices": [...], "apiKeys": [...], "webhooks": [...], '
            '"exportedAt"}`), streamed',
            "content": {"application/json": {}},
        },
        **error_responses(404),
    },
    dependencies=[export_limit],
)
async def export_account(user: SessionUser, store: StoreDep) -> StreamingResponse:
    """Everything smartgen keeps about the caller, as JSON (streamed page by page)."""
    found = await service.get_user(store=store, user_id=user.user_id)
    account = user_out(found.user_id, found.email, found.created_at).model_dump()

    async def document() -> AsyncIterator[bytes]:
        yield b'{"user":' + jsoncodec.dumps(account).encode() + b',"jobs":['
        first = True
        async for job in service.export_jobs(store=store, user_id=user.user_id):
            yield (b"" if first else b",") + _json(job_out(job).model_dump(mode="json"))
            first = False
        yield b'],"contents":['
        first = True
        async for content in service.export_contents(store=store, user_id=user.user_id):
            yield (b"" if first else b",") + _json(content_out(content).model_dump(mode="json"))
            first = False
        yield b'],"voices":['
        voices = await service.export_voices(store=store, user_id=user.user_id)
        yield b",".join(_json(voice_out(v).model_dump(mode="json")) for v in voices)
        yield b'],"apiKeys":['
        keys = await service.export_api_keys(store=store, user_id=user.user_id)
        yield b",".join(_json(key_out(k).model_dump(mode="json")) for k in keys)
        yield b'],"webhooks":['
        hooks = await service.export_webhooks(store=store, user_id=user.user_id)
        yield b",".join(_json(webhook_out(h).model_dump(mode="json")) for h in hooks)
        yield b'],"exportedAt":' + _json(iso_ms(utcnow())) + b"}"

    return StreamingResponse(
        document(),
        media_type="application/json",
        headers={
            "Content-Disposition": 'attachment; filename="smartgen-export.json"',
            "Cache-Control": "no-store",
        },
    )


def _json(value: Any) -> bytes:
    return jsoncodec.dumps(value).encode()
