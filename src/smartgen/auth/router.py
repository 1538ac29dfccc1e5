"""/auth: register, login, me."""

from __future__ import annotations

from fastapi import APIRouter, status

from smartgen.auth import service
from smartgen.auth.schemas import Credentials, Registration, TokenResponse, UserOut, user_out
from smartgen.deps import CurrentUser, StoreDep, TokensDep
from smartgen.errors import NotFound
from smartgen.store.base import User
from smartgen.times import iso_ms

router = APIRouter(prefix="/auth", tags=["auth"])


def _token_response(tokens: TokensDep, user: User) -> TokenResponse:
    token, expires = tokens.issue(user.user_id, email=user.email)
    return TokenResponse(
        token=token,
        accessToken=token,
        expiresAt=iso_ms(expires),
        user=user_out(user.user_id, user.email, user.created_at),
    )


@router.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: Registration, store: StoreDep, tokens: TokensDep) -> TokenResponse:
    """Create an account and return an access token (409 when the email is taken)."""
    user = await service.register(store=store, email=body.email, password=body.password)
    return _token_response(tokens, user)


@router.post("/login")
async def login(body: Credentials, store: StoreDep, tokens: TokensDep) -> TokenResponse:
    """Exchange email and password for an access token (401 when they do not match)."""
    user = await service.authenticate(store=store, email=body.email, password=body.password)
    return _token_response(tokens, user)


@router.get("/me")
async def me(principal: CurrentUser, store: StoreDep) -> UserOut:
    """The account the token belongs to."""
    user = await store.users.get(principal.user_id)
    if user is None:
        raise NotFound("This token's user does not exist here", code="user_not_found")
    return user_out(user.user_id, user.email, user.created_at)
