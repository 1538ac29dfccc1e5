"""/auth: register, login, me."""

from __future__ import annotations

from fastapi import APIRouter, status

from smartgen.api.deps import (
    AddressDep,
    AttemptsDep,
    HashingDep,
    ReadUser,
    StoreDep,
    TokensDep,
    rate_limit,
)
from smartgen.auth import service
from smartgen.auth.schemas import Credentials, Registration, TokenResponse, UserOut, user_out
from smartgen.errors import error_responses
from smartgen.kit.times import iso_ms

router = APIRouter(
    prefix="/auth", tags=["auth"], responses=error_responses(400, 413, 415, 422, 429, 503)
)

register_limit = rate_limit(
    "register-ip",
    lambda s: (s.register_ip_rate_limit, s.register_rate_window_seconds),
    per="address",
    fail_open=True,
)
login_limit = rate_limit(
    "login-ip",
    lambda s: (s.login_ip_rate_limit, s.login_rate_window_seconds),
    per="address",
    fail_open=True,
)


def token_response(session: service.Session) -> TokenResponse:
    user = session.user
    return TokenResponse(
        token=session.token,
        accessToken=session.token,
        expiresAt=iso_ms(session.expires_at),
        user=user_out(user.user_id, user.email, user.created_at),
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409),
    dependencies=[register_limit],
)
async def register(
    body: Registration, store: StoreDep, tokens: TokensDep, hashing: HashingDep
) -> TokenResponse:
    """Create an account and return an access token (409 when the email is taken)."""
    session = await service.register(
        store=store, tokens=tokens, slots=hashing, email=body.email, password=body.password
    )
    return token_response(session)


@router.post("/login", responses=error_responses(401), dependencies=[login_limit])
async def login(
    body: Credentials,
    store: StoreDep,
    tokens: TokensDep,
    hashing: HashingDep,
    attempts: AttemptsDep,
    address: AddressDep,
) -> TokenResponse:
    """Exchange email and password for an access token (401 when they do not match; 429
    after too many failures from the caller's address, see README: Security)."""
    session = await service.log_in(
        store=store,
        tokens=tokens,
        slots=hashing,
        attempts=attempts,
        email=body.email,
        password=body.password,
        address=address,
    )
    return token_response(session)


@router.get("/me", responses=error_responses(401, 404))
async def me(user: ReadUser, store: StoreDep) -> UserOut:
    """The account the token belongs to."""
    found = await service.get_user(store=store, user_id=user.user_id)
    return user_out(found.user_id, found.email, found.created_at)
