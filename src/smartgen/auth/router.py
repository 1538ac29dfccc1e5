"""/auth: register, login, me."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from smartgen.auth import service
from smartgen.auth.schemas import Credentials, Registration, TokenResponse, UserOut, user_out
from smartgen.auth.tokens import TokenCodec
from smartgen.deps import CurrentCaller, RuntimeDep
from smartgen.errors import NotFound, error_responses
from smartgen.store.base import User
from smartgen.times import iso_ms

router = APIRouter(
    prefix="/auth", tags=["auth"], responses=error_responses(400, 413, 415, 422, 429, 503)
)


def _client_ip(request: Request) -> str:
    # uvicorn's proxy_headers already resolved X-Forwarded-For from trusted proxies.
    return request.client.host if request.client else "unknown"


def _token_response(tokens: TokenCodec, user: User) -> TokenResponse:
    token, expires = tokens.issue(user.user_id, email=user.email)
    return TokenResponse(
        token=token,
        accessToken=token,
        expiresAt=iso_ms(expires),
        user=user_out(user.user_id, user.email, user.created_at),
    )


@router.post("/register", status_code=status.HTTP_201_CREATED, responses=error_responses(409))
async def register(body: Registration, request: Request, rt: RuntimeDep) -> TokenResponse:
    """Create an account and return an access token (409 when the email is taken)."""
    await rt.limiter.hit(
        "register-ip",
        _client_ip(request),
        limit=rt.settings.register_ip_rate_limit,
        window_seconds=rt.settings.register_rate_window_seconds,
        fail_open=True,
    )
    user = await service.register(store=rt.store, email=body.email, password=body.password)
    return _token_response(rt.tokens, user)


@router.post("/login", responses=error_responses(401))
async def login(body: Credentials, request: Request, rt: RuntimeDep) -> TokenResponse:
    """Exchange email and password for an access token (401 when they do not match)."""
    window = rt.settings.login_rate_window_seconds
    await rt.limiter.hit(
        "login-ip",
        _client_ip(request),
        limit=rt.settings.login_ip_rate_limit,
        window_seconds=window,
        fail_open=True,
    )
    await rt.limiter.hit(
        "login",
        body.email,
        limit=rt.settings.login_rate_limit,
        window_seconds=window,
        fail_open=True,
    )
    user = await service.authenticate(store=rt.store, email=body.email, password=body.password)
    return _token_response(rt.tokens, user)


@router.get("/me", responses=error_responses(401, 404))
async def me(caller: CurrentCaller) -> UserOut:
    """The account the token belongs to."""
    user = await caller.rt.store.users.get(caller.user_id)
    if user is None:
        raise NotFound("This token's user does not exist here", code="user_not_found")
    return user_out(user.user_id, user.email, user.created_at)
