"""/voices: a user's brand voices (create, list, read, change, delete)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from smartgen.api.deps import LibraryUser, ReadUser, SettingsDep, StoreDep
from smartgen.errors import error_responses
from smartgen.voices import service
from smartgen.voices.schemas import VoiceCreate, VoiceOut, VoiceUpdate, voice_out

router = APIRouter(
    prefix="/voices",
    tags=["voices"],
    responses=error_responses(400, 401, 413, 415, 422, 503),
)


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(429))
async def create_voice(
    body: VoiceCreate, user: LibraryUser, store: StoreDep, settings: SettingsDep
) -> VoiceOut:
    """Create a brand voice (at most MAX_VOICES_PER_USER); name it in `voiceId` on a job."""
    voice = await service.create_voice(
        store=store,
        settings=settings,
        user_id=user.user_id,
        name=body.name,
        description=body.description,
        examples=body.examples,
    )
    return voice_out(voice)


@router.get("")
async def list_voices(user: ReadUser, store: StoreDep, settings: SettingsDep) -> list[VoiceOut]:
    """Your brand voices, newest first."""
    voices = await store.voices.list_for_user(user.user_id, limit=settings.max_voices_per_user)
    return [voice_out(v) for v in voices]


@router.get("/{voiceId}", responses=error_responses(404))
async def get_voice(voiceId: str, user: ReadUser, store: StoreDep) -> VoiceOut:
    """One of your brand voices."""
    return voice_out(await service.get_voice(store=store, user_id=user.user_id, voice_id=voiceId))


@router.patch("/{voiceId}", responses=error_responses(404))
async def update_voice(
    voiceId: str, body: VoiceUpdate, user: LibraryUser, store: StoreDep
) -> VoiceOut:
    """Change a brand voice's name, description or examples (jobs already queued keep the
    voice as it was when they were queued)."""
    voice = await service.update_voice(
        store=store,
        user_id=user.user_id,
        voice_id=voiceId,
        name=body.name,
        description=body.description,
        examples=body.examples,
    )
    return voice_out(voice)


@router.delete("/{voiceId}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404))
async def delete_voice(voiceId: str, user: LibraryUser, store: StoreDep) -> Response:
    """Delete a brand voice; jobs that used it keep their copy."""
    await service.delete_voice(store=store, user_id=user.user_id, voice_id=voiceId)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
