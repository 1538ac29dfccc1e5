"""Personal API keys on MongoDB (the `api_keys` collection), beside `mongo.py`, which
builds the repository with the others and creates its indexes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.errors import ConnectionFailure

from smartgen.kit.times import as_utc
from smartgen.models import ApiKey
from smartgen.store.unavailable import translate_unavailable

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))


def _dt(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _key_from_doc(doc: dict[str, Any]) -> ApiKey:
    return ApiKey(
        key_id=doc["keyId"],
        user_id=str(doc["userId"]),
        name=doc["name"],
        prefix=doc["prefix"],
        key_hash=doc["keyHash"],
        scopes=list(doc.get("scopes") or []),
        created_at=as_utc(doc["createdAt"]),
        last_used_at=_dt(doc.get("lastUsedAt")),
        expires_at=_dt(doc.get("expiresAt")),
    )


class MongoApiKeys:
    def __init__(self, db: Any) -> None:
        self._c = db["api_keys"]

    @staticmethod
    async def create_indexes(db: Any) -> None:
        await db["api_keys"].create_index("keyId", unique=True)
        await db["api_keys"].create_index("keyHash", unique=True)
        await db["api_keys"].create_index([("userId", 1), ("createdAt", DESCENDING)])

    @_unavailable
    async def create(self, key: ApiKey, *, max_per_user: int) -> bool:
        # Two round trips, as jobs' cap: concurrent creations may overshoot slightly.
        if await self._c.count_documents({"userId": key.user_id}) >= max_per_user:
            return False
        await self._c.insert_one(
            {
                "keyId": key.key_id,
                "userId": key.user_id,
                "name": key.name,
                "prefix": key.prefix,
                "keyHash": key.key_hash,
                "scopes": key.scopes,
                "createdAt": key.created_at,
                "lastUsedAt": key.last_used_at,
                "expiresAt": key.expires_at,
            }
        )
        return True

    @_unavailable
    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        doc = await self._c.find_one({"keyHash": key_hash})
        return _key_from_doc(doc) if doc else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[ApiKey]:
        cursor = self._c.find({"userId": user_id}).sort(
            [("createdAt", DESCENDING), ("_id", DESCENDING)]
        )
        return [_key_from_doc(d) async for d in cursor.limit(limit)]

    @_unavailable
    async def delete(self, key_id: str, user_id: str) -> bool:
        result = await self._c.delete_one({"keyId": key_id, "userId": user_id})
        return bool(result.deleted_count == 1)

    @_unavailable
    async def touch(self, key_id: str, *, at: datetime) -> None:
        await self._c.update_one({"keyId": key_id}, {"$set": {"lastUsedAt": at}})

    @_unavailable
    async def delete_for_user(self, user_id: str) -> int:
        return int((await self._c.delete_many({"userId": user_id})).deleted_count)
