"""Brand voices on MongoDB (the `voices` collection), beside `mongo.py`, which builds the
repository with the others and creates its indexes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.errors import ConnectionFailure

from smartgen.kit.times import as_utc
from smartgen.models import Voice
from smartgen.store.unavailable import translate_unavailable

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))


def _voice_from_doc(doc: dict[str, Any]) -> Voice:
    return Voice(
        voice_id=doc["voiceId"],
        user_id=str(doc["userId"]),
        name=doc["name"],
        description=doc.get("description", ""),
        examples=list(doc.get("examples") or []),
        created_at=as_utc(doc["createdAt"]),
        updated_at=as_utc(doc.get("updatedAt") or doc["createdAt"]),
    )


class MongoVoices:
    def __init__(self, db: Any) -> None:
        self._c = db["voices"]

    @_unavailable
    async def create(self, voice: Voice, *, max_per_user: int) -> bool:
        # Two round trips, as jobs' cap: concurrent creations may overshoot slightly.
        if await self._c.count_documents({"userId": voice.user_id}) >= max_per_user:
            return False
        await self._c.insert_one(
            {
                "voiceId": voice.voice_id,
                "userId": voice.user_id,
                "name": voice.name,
                "description": voice.description,
                "examples": voice.examples,
                "createdAt": voice.created_at,
                "updatedAt": voice.updated_at,
            }
        )
        return True

    @_unavailable
    async def get_for_user(self, voice_id: str, user_id: str) -> Voice | None:
        doc = await self._c.find_one({"voiceId": voice_id, "userId": user_id})
        return _voice_from_doc(doc) if doc else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[Voice]:
        cursor = self._c.find({"userId": user_id}).sort(
            [("createdAt", DESCENDING), ("_id", DESCENDING)]
        )
        return [_voice_from_doc(d) async for d in cursor.limit(limit)]

    @_unavailable
    async def update(
        self,
        voice_id: str,
        user_id: str,
        *,
        at: datetime,
        name: str | None = None,
        description: str | None = None,
        examples: list[str] | None = None,
    ) -> Voice | None:
        changes: dict[str, Any] = {"updatedAt": at}
        for key, value in (("name", name), ("description", description), ("examples", examples)):
            if value is not None:
                changes[key] = value
        query = {"voiceId": voice_id, "userId": user_id}
        if (await self._c.update_one(query, {"$set": changes})).matched_count == 0:
            return None
        doc = await self._c.find_one(query)
        return _voice_from_doc(doc) if doc else None

    @_unavailable
    async def delete(self, voice_id: str, user_id: str) -> bool:
        result = await self._c.delete_one({"voiceId": voice_id, "userId": user_id})
        return bool(result.deleted_count == 1)
