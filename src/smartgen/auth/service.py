"""Accounts and sessions: register, log in, who am I, log out, change the password,
delete the account, export it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

from bson import ObjectId

from smartgen.auth.passwords import HashingSlots, hash_password, verify_password
from smartgen.auth.tokens import Principal, TokenCodec
from smartgen.errors import NotFound, Unauthorized
from smartgen.kit.times import utcnow
from smartgen.models import UNFINISHED, ApiKey, Content, Job, User, Voice, WebhookEndpoint
from smartgen.ports import EventHistory, JobQueue, LoginAttempts, RefreshTokens, Revocations
from smartgen.store.base import Store

EXPORT_PAGE = 200


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    token: str
    expires_at: datetime
    refresh_token: str | None = None  # a console session's (its cookie)


@dataclass(frozen=True, slots=True)
class ConsoleSessions:
    """How the web console's sessions are made: access tokens of `minutes`, renewed with
    `refresh` tokens (README: Design, "The console's session")."""

    refresh: RefreshTokens
    minutes: int


async def register(
    *,
    store: Store,
    tokens: TokenCodec,
    slots: HashingSlots,
    email: str,
    password: str,
    console: ConsoleSessions | None = None,
) -> Session:
    """Create an account and a token (and a refresh token for a `console` session);
    `Conflict` when the email is taken."""
    # ObjectId-shaped ids: the same shape as the Node original's user ids.
    user = User(
        user_id=str(ObjectId()),
        email=email,
        password_hash=await hash_password(password, slots),
        created_at=utcnow(),
    )
    await store.users.create(user)
    return await _session(tokens, user, console)


async def log_in(
    *,
    store: Store,
    tokens: TokenCodec,
    slots: HashingSlots,
    attempts: LoginAttempts,
    email: str,
    password: str,
    address: str,
    console: ConsoleSessions | None = None,
) -> Session:
    """A token for matching email and password; `Unauthorized` otherwise, and
    `TooManyRequests` for an address that failed too often (only failures count)."""
    await attempts.check(email, address)
    try:
        user = await authenticate(store=store, slots=slots, email=email, password=password)
    except Unauthorized:
        await attempts.failed(email, address)
        raise
    await attempts.succeeded(email, address)
    return await _session(tokens, user, console)


async def refresh_session(
    *, store: Store, tokens: TokenCodec, console: ConsoleSessions, refresh_token: str
) -> Session:
    """Spend a console session's refresh token: a new access token and the refresh
    token's successor; `Unauthorized` when it is unknown, spent (its family ends) or its
    session ended, or the account is gone."""
    grant = await console.refresh.rotate(refresh_token)
    user = await store.users.get(grant.user_id)
    if user is None:
        await console.refresh.end(grant.token)
        raise Unauthorized("This session's user no longer exists", code="refresh_invalid")
    token, expires = tokens.issue(user.user_id, email=user.email, minutes=console.minutes)
    return Session(user=user, token=token, expires_at=expires, refresh_token=grant.token)


async def authenticate(*, store: Store, slots: HashingSlots, email: str, password: str) -> User:
    user = await store.users.get_by_email(email)
    verified = await verify_password(user.password_hash if user else None, password, slots)
    if user is None or not verified.ok:
        raise Unauthorized("Wrong email or password", code="invalid_credentials")
    if verified.rehash:  # a hash made before passwords were normalised: renew it
        await store.users.set_password(user.user_id, await hash_password(password, slots))
    return user


async def get_user(*, store: Store, user_id: str) -> User:
    user = await store.users.get(user_id)
    if user is None:
        raise NotFound("This token's user does not exist here", code="user_not_found")
    return user


async def _confirm(*, store: Store, slots: HashingSlots, user_id: str, password: str) -> User:
    """The caller's account, when `password` is its password (`Unauthorized` otherwise)."""
    user = await get_user(store=store, user_id=user_id)
    verified = await verify_password(user.password_hash, password, slots)
    if not verified.ok:
        raise Unauthorized("The current password is wrong", code="invalid_credentials")
    return user


async def log_out(
    *,
    revocations: Revocations,
    principal: Principal,
    refresh: RefreshTokens | None = None,
    refresh_token: str | None = None,
) -> None:
    """End this token's session (other sessions of the user go on), and the console
    session of `refresh_token` when one is given."""
    if refresh is not None and refresh_token:
        await refresh.end(refresh_token)
    if principal.token_id is not None and principal.expires_at is not None:
        await revocations.revoke_token(
            principal.user_id, principal.token_id, expires_at=principal.expires_at
        )
    else:  # a token minted elsewhere, without a jti: only all of the user's can go
        await revocations.revoke_user(principal.user_id, before=time.time())


async def change_password(
    *,
    store: Store,
    tokens: TokenCodec,
    slots: HashingSlots,
    revocations: Revocations,
    user_id: str,
    current: str,
    new: str,
) -> Session:
    """Check the current password, store the new one, end every session issued so far and
    return a fresh one."""
    user = await _confirm(store=store, slots=slots, user_id=user_id, password=current)
    new_hash = await hash_password(new, slots)
    # Sessions end first: if that cannot be done, nothing changes (503); if storing the
    # new password then fails, the old one still works and no session outlived the change.
    await revocations.revoke_user(user_id, before=time.time())
    if not await store.users.set_password(user_id, new_hash):
        raise NotFound("This token's user does not exist here", code="user_not_found")
    return await _session(tokens, user, None)  # issued after the cut


async def delete_account(
    *,
    store: Store,
    queue: JobQueue,
    slots: HashingSlots,
    revocations: Revocations,
    history: EventHistory,
    user_id: str,
    password: str,
) -> None:
    """Delete the account and everything it owns: its tokens stop working first, then its
    queued and running work is cancelled in the queue, then its jobs, contents, brand
    voices, API keys, webhooks (and their deliveries) and the account itself are removed
    from the store, and its event log from Redis. Returns when all of it is done."""
    await _confirm(store=store, slots=slots, user_id=user_id, password=password)
    await revocations.revoke_user(user_id, before=float("inf"), deleted=True)
    after: str | None = None
    while page := await store.jobs.page_for_user(user_id, after=after, limit=EXPORT_PAGE):
        for job in page:
            if job.status in UNFINISHED:
                await queue.cancel(job.job_id)
        after = page[-1].job_id
    await store.contents.delete_for_user(user_id)
    await store.batches.delete_for_user(user_id)
    while voices := await store.voices.list_for_user(user_id, limit=EXPORT_PAGE):
        for voice in voices:
            await store.voices.delete(voice.voice_id, user_id)
    await store.api_keys.delete_for_user(user_id)
    await store.webhooks.delete_for_user(user_id)
    await history.forget(user_id)
    await store.users.delete(user_id)
    # Last, and after the account is gone: a job queued by a request that was already past
    # its token check is removed too.
    await store.jobs.delete_for_user(user_id)


async def export_jobs(*, store: Store, user_id: str) -> AsyncIterator[Job]:
    after: str | None = None
    while page := await store.jobs.page_for_user(user_id, after=after, limit=EXPORT_PAGE):
        for job in page:
            yield job
        after = page[-1].job_id


async def export_voices(*, store: Store, user_id: str) -> list[Voice]:
    """A user's brand voices (at most MAX_VOICES_PER_USER: one read)."""
    return await store.voices.list_for_user(user_id, limit=10_000)


async def export_api_keys(*, store: Store, user_id: str) -> list[ApiKey]:
    """A user's API keys (a capped number: one read); their hashes are the caller's to
    leave out."""
    return await store.api_keys.list_for_user(user_id, limit=10_000)


async def export_webhooks(*, store: Store, user_id: str) -> list[WebhookEndpoint]:
    """A user's webhooks (a capped number: one read); their secrets are the caller's to
    leave out."""
    return await store.webhooks.list_for_user(user_id, limit=10_000)


async def export_contents(*, store: Store, user_id: str) -> AsyncIterator[Content]:
    after: str | None = None
    while page := await store.contents.page_for_user(user_id, after=after, limit=EXPORT_PAGE):
        for content in page:
            yield content
        after = page[-1].content_id


async def _session(tokens: TokenCodec, user: User, console: ConsoleSessions | None) -> Session:
    if console is None:
        token, expires = tokens.issue(user.user_id, email=user.email)
        return Session(user=user, token=token, expires_at=expires)
    grant = await console.refresh.start(user.user_id)
    token, expires = tokens.issue(user.user_id, email=user.email, minutes=console.minutes)
    return Session(user=user, token=token, expires_at=expires, refresh_token=grant.token)
