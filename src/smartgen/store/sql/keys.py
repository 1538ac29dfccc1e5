"""Personal API keys on the SQL stores: the `api_keys` table's statements (PostgreSQL's
spelling, rewritten by each driver as the jobs' are) and the repository, beside
`repository.py`, which builds it with the others."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime

from smartgen.models import ApiKey
from smartgen.store.sql.repository import Row, _Repository

_KEY_FIELDS = [f.name for f in fields(ApiKey)]
KEY_COLS = ", ".join(_KEY_FIELDS)
_KEY_TIMES = [i for i, name in enumerate(_KEY_FIELDS) if name.endswith("_at")]
_KEY_SCOPES = _KEY_FIELDS.index("scopes")

KEY_STATEMENTS = {
    "key_insert": (
        f"INSERT INTO api_keys ({KEY_COLS}) "
        "SELECT $1::varchar, $2::varchar, $3::text, $4::varchar, $5::varchar, $6::jsonb, "
        "$7::timestamptz, $8::timestamptz, $9::timestamptz "
        "WHERE (SELECT count(*) FROM api_keys WHERE user_id = $2) < $10::integer"
    ),
    "key_by_hash": f"SELECT {KEY_COLS} FROM api_keys WHERE key_hash = $1",
    "keys_for_user": (
        f"SELECT {KEY_COLS} FROM api_keys WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "key_delete": "DELETE FROM api_keys WHERE key_id = $1 AND user_id = $2",
    "key_touch": "UPDATE api_keys SET last_used_at = $2 WHERE key_id = $1",
    "keys_delete_for_user": "DELETE FROM api_keys WHERE user_id = $1",
}


class ApiKeys(_Repository):
    def _key(self, row: Row) -> ApiKey:
        values = self._times(row, _KEY_TIMES)
        if not isinstance(values[_KEY_SCOPES], list):
            values[_KEY_SCOPES] = json.loads(values[_KEY_SCOPES])
        return ApiKey(*values)

    async def create(self, key: ApiKey, *, max_per_user: int) -> bool:
        ts = self._db.ts
        args = (
            key.key_id, key.user_id, key.name, key.prefix, key.key_hash,
            json.dumps(key.scopes), ts(key.created_at), ts(key.last_used_at),
            ts(key.expires_at), max_per_user,
        )  # fmt: skip
        return await self._db.changes(self._sql["key_insert"], args) == 1

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        row = await self._db.one(self._sql["key_by_hash"], (key_hash,))
        return self._key(row) if row else None

    async def list_for_user(self, user_id: str, *, limit: int) -> list[ApiKey]:
        args = (user_id, self._limit(limit))
        return [self._key(r) for r in await self._db.all(self._sql["keys_for_user"], args)]

    async def delete(self, key_id: str, user_id: str) -> bool:
        return await self._db.changes(self._sql["key_delete"], (key_id, user_id)) == 1

    async def touch(self, key_id: str, *, at: datetime) -> None:
        await self._db.changes(self._sql["key_touch"], (key_id, self._db.ts(at)))

    async def delete_for_user(self, user_id: str) -> int:
        return await self._db.changes(self._sql["keys_delete_for_user"], (user_id,))
