"""Accounts and sessions: register, log in, who am I."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bson import ObjectId

from smartgen.auth.passwords import hash_password, verify_password
from smartgen.auth.tokens import TokenCodec
from smartgen.config import Settings
from smartgen.errors import NotFound, Unauthorized
from smartgen.kit.times import utcnow
from smartgen.models import User
from smartgen.ports import RateLimits
from smartgen.store.base import Store


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    token: str
    expires_at: datetime


async def register(*, store: Store, tokens: TokenCodec, email: str, password: str) -> Session:
    """Create an account and a token; `Conflict` when the email is taken."""
    # ObjectId-shaped ids: the same shape as the Node original's user ids.
    user = User(
        user_id=str(ObjectId()),
        email=email,
        password_hash=await hash_password(password),
        created_at=utcnow(),
    )
    await store.users.create(user)
    return _session(tokens, user)


async def log_in(
    *,
    store: Store,
    tokens: TokenCodec,
    limits: RateLimits,
    settings: Settings,
    email: str,
    password: str,
) -> Session:
    """A token for matching email and password; `Unauthorized` otherwise."""
    await limits.hit(
        "login",
        email,
        limit=settings.login_rate_limit,
        window_seconds=settings.login_rate_window_seconds,
        fail_open=True,
    )
    return _session(tokens, await authenticate(store=store, email=email, password=password))


async def authenticate(*, store: Store, email: str, password: str) -> User:
    user = await store.users.get_by_email(email)
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok:
        raise Unauthorized("Wrong email or password", code="invalid_credentials")
    return user


async def get_user(*, store: Store, user_id: str) -> User:
    user = await store.users.get(user_id)
    if user is None:
        raise NotFound("This token's user does not exist here", code="user_not_found")
    return user


def _session(tokens: TokenCodec, user: User) -> Session:
    token, expires = tokens.issue(user.user_id, email=user.email)
    return Session(user=user, token=token, expires_at=expires)
