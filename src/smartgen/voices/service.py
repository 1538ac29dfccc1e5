"""Brand voices, owner-scoped: another user's voice is indistinguishable from a missing
one (404)."""

from __future__ import annotations

from uuid import UUID, uuid4

from smartgen.config import Settings
from smartgen.errors import NotFound, TooManyRequests
from smartgen.kit.times import utcnow
from smartgen.models import Voice
from smartgen.store.base import Store

NOT_FOUND = "Voice not found"


def parse_voice_id(voice_id: str) -> str:
    """Voice ids are UUIDs; anything else cannot exist (404, never a 500)."""
    try:
        return str(UUID(voice_id))
    except (ValueError, AttributeError):
        raise NotFound(NOT_FOUND, code="voice_not_found") from None


async def create_voice(
    *,
    store: Store,
    settings: Settings,
    user_id: str,
    name: str,
    description: str,
    examples: list[str],
) -> Voice:
    now = utcnow()
    voice = Voice(
        voice_id=str(uuid4()),
        user_id=user_id,
        name=name,
        description=description,
        examples=examples,
        created_at=now,
        updated_at=now,
    )
    cap = settings.max_voices_per_user
    if not await store.voices.create(voice, max_per_user=cap):
        raise TooManyRequests(
            f"You have {cap} brand voices (at most {cap}); delete one first",
            code="too_many_voices",
        )
    return voice


async def get_voice(*, store: Store, user_id: str, voice_id: str) -> Voice:
    voice = await store.voices.get_for_user(parse_voice_id(voice_id), user_id)
    if voice is None:
        raise NotFound(NOT_FOUND, code="voice_not_found")
    return voice


async def update_voice(
    *,
    store: Store,
    user_id: str,
    voice_id: str,
    name: str | None,
    description: str | None,
    examples: list[str] | None,
) -> Voice:
    changed = await store.voices.update(
        parse_voice_id(voice_id),
        user_id,
        at=utcnow(),
        name=name,
        description=description,
        examples=examples,
    )
    if changed is None:
        raise NotFound(NOT_FOUND, code="voice_not_found")
    return changed


async def delete_voice(*, store: Store, user_id: str, voice_id: str) -> None:
    """Jobs that applied the voice keep their copy of it."""
    if not await store.voices.delete(parse_voice_id(voice_id), user_id):
        raise NotFound(NOT_FOUND, code="voice_not_found")
