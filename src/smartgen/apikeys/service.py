"""Personal API keys, owner-scoped: another user's key is indistinguishable from a missing
one (404). Revocation goes through the session revocations, so every API process refuses
the key at once (`auth/keys.py`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from smartgen.auth.keys import CACHE_SECONDS, key_hash, new_key, shown_prefix, token_id
from smartgen.errors import NotFound, TooManyRequests
from smartgen.kit.times import utcnow
from smartgen.models import ApiKey
from smartgen.ports import Revocations
from smartgen.store.base import Store

MAX_KEYS_PER_USER = 50
NOT_FOUND = "API key not found"


async def create_key(
    *, store: Store, user_id: str, name: str, scopes: list[str], expires_at: datetime | None
) -> tuple[ApiKey, str]:
    """A new key and its text (`sg_…`), which is stored only as its hash."""
    secret = new_key()
    key = ApiKey(
        key_id=str(uuid4()),
        user_id=user_id,
        name=name,
        prefix=shown_prefix(secret),
        key_hash=key_hash(secret),
        scopes=list(scopes),
        created_at=utcnow(),
        expires_at=expires_at,
    )
    if not await store.api_keys.create(key, max_per_user=MAX_KEYS_PER_USER):
        raise TooManyRequests(
            f"You have {MAX_KEYS_PER_USER} API keys (at most {MAX_KEYS_PER_USER}); "
            "delete one first",
            code="too_many_api_keys",
        )
    return key, secret


async def list_keys(*, store: Store, user_id: str) -> list[ApiKey]:
    return await store.api_keys.list_for_user(user_id, limit=MAX_KEYS_PER_USER)


async def revoke_key(*, store: Store, revocations: Revocations, user_id: str, key_id: str) -> None:
    """Refuse the key in every API process at once, then delete it. The owner is checked
    first: a revocation is named by key id alone."""
    keys = await store.api_keys.list_for_user(user_id, limit=MAX_KEYS_PER_USER)
    if not any(key.key_id == key_id for key in keys):
        raise NotFound(NOT_FOUND, code="api_key_not_found")
    # Marked revoked for longer than any process keeps a looked-up key; after that the
    # store (where the key is gone) answers.
    until = utcnow() + timedelta(seconds=CACHE_SECONDS * 2)
    await revocations.revoke_token(user_id, token_id(key_id), expires_at=until)
    await store.api_keys.delete(key_id, user_id)
