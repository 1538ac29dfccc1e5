"""Saved contents on the SQL stores: the `contents` table's statements (PostgreSQL's
spelling, rewritten by each driver) and the repository, beside `repository.py`, which
builds it with the others.

The library's search is the database's own: SQLite matches the FTS5 table
`contents_fts` (kept in step by triggers, `schema.py`), PostgreSQL the generated
`search` tsvector through its GIN index. The words come from `kit.text.search_words`
and reach the database only as parameters: for FTS5 each word is a quoted string token,
for PostgreSQL `plainto_tsquery` takes plain text, so no query text is syntax."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from smartgen.kit.text import search_words
from smartgen.models import Content
from smartgen.store.sql.repository import CONTENT_COLS, Driver, _Repository
from smartgen.store.sql.schema import Dialect

CONTENT_STATEMENTS = {
    # Oldest first, page by page, along ix_contents_user_created: the page after the row
    # of the id given.
    "contents_first_page_for_user": (
        f"SELECT {CONTENT_COLS} FROM contents WHERE user_id = $1 ORDER BY created_at, id LIMIT $2"
    ),
    "contents_page_for_user": (
        f"SELECT {CONTENT_COLS} FROM contents WHERE user_id = $1 AND (created_at, id) > "
        "(SELECT created_at, id FROM contents WHERE content_id = $2) "
        "ORDER BY created_at, id LIMIT $3"
    ),
    "contents_delete_for_user": "DELETE FROM contents WHERE user_id = $1",
    "content_insert": (
        "INSERT INTO contents (content_id, user_id, job_id, title, body, content_type, "
        "prompt, model, created_at, updated_at, tags) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10::jsonb)"
    ),
    "content_by_job": f"SELECT {CONTENT_COLS} FROM contents WHERE job_id = $1",
    "content_by_job_for_user": (
        f"SELECT {CONTENT_COLS} FROM contents WHERE job_id = $1 AND user_id = $2"
    ),
    "content_by_id_for_user": (
        f"SELECT {CONTENT_COLS} FROM contents WHERE content_id = $1 AND user_id = $2"
    ),
    "contents_for_user": (
        f"SELECT {CONTENT_COLS} FROM contents WHERE user_id = $1 "
        "ORDER BY created_at DESC, id DESC LIMIT $2"
    ),
    "content_update": (
        "UPDATE contents SET title = COALESCE($3::text, title), "
        "body = COALESCE($4::text, body), tags = COALESCE($5::jsonb, tags), updated_at = $6 "
        f"WHERE content_id = $1 AND user_id = $2 RETURNING {CONTENT_COLS}"
    ),
    "content_delete": "DELETE FROM contents WHERE content_id = $1 AND user_id = $2",
}

# How each database finds the rows containing every word ($n: the word list, as the
# dialect's match text).
_MATCH: dict[Dialect, str] = {
    "sqlite": "id IN (SELECT rowid FROM contents_fts WHERE contents_fts MATCH $n)",
    "postgresql": "search @@ plainto_tsquery('simple', $n::text)",
}
_HAS_TAG: dict[Dialect, str] = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(contents.tags) WHERE value = $n)",
    "postgresql": "tags @> $n::jsonb",
}


def fts5_match(words: list[str]) -> str:
    """An FTS5 query matching rows that hold every word: each one a string token
    (`"…"`, an inner `"` doubled), so `NEAR`, `*`, `-`, `:` or quotes are never operators."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class Contents(_Repository):
    def __init__(self, driver: Driver, statements: dict[str, str], dialect: Dialect) -> None:
        super().__init__(driver, statements)
        self._dialect = dialect

    async def create_once(self, content: Content) -> tuple[Content, bool]:
        args = (
            content.content_id,
            content.user_id,
            content.job_id,
            content.title,
            content.body,
            content.content_type,
            content.prompt,
            content.model,
            self._db.ts(content.created_at),
            json.dumps(content.tags),
        )
        try:
            await self._db.changes(self._sql["content_insert"], args)
            return content, True
        except self._db.unique_violation:
            # The unique index on job_id decided the race; hand back the winner.
            row = await self._db.one(self._sql["content_by_job"], (content.job_id,))
            if row is None:  # pragma: no cover - a concurrent delete, or a content_id clash
                raise
            return self._content(row), False

    async def get_for_user(self, content_id: str, user_id: str) -> Content | None:
        row = await self._db.one(self._sql["content_by_id_for_user"], (content_id, user_id))
        return self._content(row) if row else None

    async def get_for_job(self, job_id: str, user_id: str) -> Content | None:
        row = await self._db.one(self._sql["content_by_job_for_user"], (job_id, user_id))
        return self._content(row) if row else None

    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]:
        args = (user_id, self._limit(limit))
        return [self._content(r) for r in await self._db.all(self._sql["contents_for_user"], args)]

    async def search(
        self,
        user_id: str,
        *,
        limit: int,
        query: str | None = None,
        content_type: str | None = None,
        tag: str | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[Content]:
        clauses = ["user_id = $1"]
        args: list[Any] = [user_id]

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if query is not None:
            words = search_words(query)
            if not words:
                return []
            text = fts5_match(words) if self._dialect == "sqlite" else " ".join(words)
            clauses.append(_MATCH[self._dialect].replace("$n", param(text)))
        if content_type is not None:
            clauses.append(f"content_type = {param(content_type)}")
        if tag is not None:
            value = tag if self._dialect == "sqlite" else json.dumps([tag])
            clauses.append(_HAS_TAG[self._dialect].replace("$n", param(value)))
        if before is not None:
            at, content_id = param(self._db.ts(before[0])), param(before[1])
            clauses.append(
                f"(created_at < {at} OR (created_at = {at} AND content_id < {content_id}))"
            )
        sql = (
            f"SELECT {CONTENT_COLS} FROM contents WHERE {' AND '.join(clauses)} "
            f"ORDER BY created_at DESC, content_id DESC LIMIT {param(self._limit(limit))}"
        )
        rows = await self._db.all(self._db.statement(sql), args)
        return [self._content(r) for r in rows]

    async def update(
        self,
        content_id: str,
        user_id: str,
        *,
        at: datetime,
        title: str | None = None,
        body: str | None = None,
        tags: list[str] | None = None,
    ) -> Content | None:
        args = (
            content_id, user_id, title, body,
            None if tags is None else json.dumps(tags), self._db.ts(at),
        )  # fmt: skip
        row = await self._db.one(self._sql["content_update"], args)
        return self._content(row) if row else None

    async def delete(self, content_id: str, user_id: str) -> bool:
        return await self._db.changes(self._sql["content_delete"], (content_id, user_id)) == 1

    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Content]:
        args: tuple[Any, ...] = (user_id, self._limit(limit))
        sql = self._sql["contents_first_page_for_user"]
        if after is not None:
            sql, args = self._sql["contents_page_for_user"], (user_id, after, self._limit(limit))
        return [self._content(r) for r in await self._db.all(sql, args)]

    async def delete_for_user(self, user_id: str) -> int:
        return await self._db.changes(self._sql["contents_delete_for_user"], (user_id,))
