"""Brand voices on the SQL stores: the `voices` table's statements (PostgreSQL's spelling,
rewritten by each driver as the jobs' are) and the repository, beside `repository.py`,
which builds it with the others."""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime

from smartgen.models import Voice
from smartgen.store.sql.repository import Row, _Repository

_VOICE_FIELDS = [f.name for f in fields(Voice)]
VOICE_COLS = ", ".join(_VOICE_FIELDS)
_VOICE_TIMES = [i for i, name in enumerate(_VOICE_FIELDS) if name.endswith("_at")]
_VOICE_EXAMPLES = _VOICE_FIELDS.index("examples")

VOICE_STATEMENTS = {
    "voice_insert": (
        f"INSERT INTO voices ({VOICE_COLS}) "
        "SELECT $1::varchar, $2::varchar, $3::text, $4::text, $5::jsonb, "
        "$6::timestamptz, $7::timestamptz "
        "WHERE (SELECT count(*) FROM voices WHERE user_id = $2) < $8::integer"
    ),
    "voice_by_id_for_user": (
        f"SELECT {VOICE_COLS} FROM voices WHERE voice_id = $1 AND user_id = $2"
    ),
    "voices_for_user": (
        f"SELECT {VOICE_COLS} FROM voices WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "voice_update": (
        "UPDATE voices SET name = COALESCE($3::text, name), "
        "description = COALESCE($4::text, description), "
        "examples = COALESCE($5::jsonb, examples), updated_at = $6 "
        f"WHERE voice_id = $1 AND user_id = $2 RETURNING {VOICE_COLS}"
    ),
    "voice_delete": "DELETE FROM voices WHERE voice_id = $1 AND user_id = $2",
}


class Voices(_Repository):
    def _voice(self, row: Row) -> Voice:
        values = self._times(row, _VOICE_TIMES)
        if not isinstance(values[_VOICE_EXAMPLES], list):
            values[_VOICE_EXAMPLES] = json.loads(values[_VOICE_EXAMPLES])
        return Voice(*values)

    async def create(self, voice: Voice, *, max_per_user: int) -> bool:
        ts = self._db.ts
        args = (
            voice.voice_id, voice.user_id, voice.name, voice.description,
            json.dumps(voice.examples), ts(voice.created_at), ts(voice.updated_at), max_per_user,
        )  # fmt: skip
        return await self._db.changes(self._sql["voice_insert"], args) == 1

    async def get_for_user(self, voice_id: str, user_id: str) -> Voice | None:
        row = await self._db.one(self._sql["voice_by_id_for_user"], (voice_id, user_id))
        return self._voice(row) if row else None

    async def list_for_user(self, user_id: str, *, limit: int) -> list[Voice]:
        args = (user_id, self._limit(limit))
        return [self._voice(r) for r in await self._db.all(self._sql["voices_for_user"], args)]

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
        args = (
            voice_id, user_id, name, description,
            None if examples is None else json.dumps(examples), self._db.ts(at),
        )  # fmt: skip
        row = await self._db.one(self._sql["voice_update"], args)
        return self._voice(row) if row else None

    async def delete(self, voice_id: str, user_id: str) -> bool:
        return await self._db.changes(self._sql["voice_delete"], (voice_id, user_id)) == 1
