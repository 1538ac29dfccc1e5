"""Saved contents on MongoDB (the `contents` collection), beside `mongo.py`, which builds
the repository with the others and creates its indexes (the text index included).

The library's search: every word of the query (`kit.text.search_words`), whole and in
any case, in the title or the body, as an anchored `$regex` per word; where the server
has the text index, `$text` first narrows the search to the documents the index holds
for any of the words."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import ConnectionFailure, DuplicateKeyError

from smartgen.kit.text import search_words
from smartgen.kit.times import as_utc
from smartgen.models import Content
from smartgen.store.unavailable import translate_unavailable

_unavailable = translate_unavailable(lambda error: isinstance(error, ConnectionFailure))


def _dt(value: Any) -> datetime | None:
    return as_utc(value) if isinstance(value, datetime) else None


def _content_from_doc(doc: dict[str, Any]) -> Content:
    return Content(
        content_id=doc["contentId"],
        user_id=str(doc["userId"]),
        job_id=doc["jobId"],
        title=doc["title"],
        body=doc["body"],
        content_type=doc["contentType"],
        created_at=as_utc(doc["createdAt"]),
        prompt=doc.get("prompt"),
        model=doc.get("model"),
        tags=list(doc.get("tags") or []),
        updated_at=_dt(doc.get("updatedAt")),
    )


def _word_pattern(word: str) -> str:
    """`word` as a whole word (no letter or digit either side), for `$regex`."""
    return r"(?<![^\W_])" + re.escape(word) + r"(?![^\W_])"


async def page_after(
    collection: Any, query: dict[str, Any], id_field: str, after: str | None
) -> dict[str, Any] | None:
    """`query` narrowed to the documents after the one whose `id_field` is `after`, in
    (createdAt, _id) order (the (userId, createdAt) index); None when that one is gone."""
    if after is None:
        return query
    mark = await collection.find_one({**query, id_field: after}, {"createdAt": 1})
    if mark is None:
        return None
    created = mark["createdAt"]
    return {
        **query,
        "$or": [
            {"createdAt": {"$gt": created}},
            {"createdAt": created, "_id": {"$gt": mark["_id"]}},
        ],
    }


class MongoContents:
    def __init__(self, db: Any) -> None:
        self._c = db["contents"]
        # Whether the server has the text index: `$text` narrows a search to the indexed
        # candidates then; without it the word patterns alone scan the user's contents.
        # Known after `MongoStore.init`; a store that did not run it (an API process: the
        # schema is made once, by `server/startup.py`) looks at the first search.
        self.text_index: bool | None = None

    @_unavailable
    async def create_once(self, content: Content) -> tuple[Content, bool]:
        doc = {
            "contentId": content.content_id,
            "userId": content.user_id,
            "jobId": content.job_id,
            "title": content.title,
            "body": content.body,
            "contentType": content.content_type,
            "prompt": content.prompt,
            "model": content.model,
            "createdAt": content.created_at,
            "updatedAt": content.updated_at,
            "tags": list(content.tags),
        }
        try:
            await self._c.insert_one(doc)
            return content, True
        except DuplicateKeyError:
            existing = await self._c.find_one({"jobId": content.job_id})
            if existing is None:  # pragma: no cover - a concurrent delete
                raise
            return _content_from_doc(existing), False

    @_unavailable
    async def get_for_user(self, content_id: str, user_id: str) -> Content | None:
        doc = await self._c.find_one({"contentId": content_id, "userId": user_id})
        return _content_from_doc(doc) if doc else None

    @_unavailable
    async def get_for_job(self, job_id: str, user_id: str) -> Content | None:
        doc = await self._c.find_one({"jobId": job_id, "userId": user_id})
        return _content_from_doc(doc) if doc else None

    @_unavailable
    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]:
        cursor = self._c.find({"userId": user_id}).sort("createdAt", DESCENDING).limit(limit)
        return [_content_from_doc(d) async for d in cursor]

    @_unavailable
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
        find: dict[str, Any] = {"userId": user_id}
        if query is not None:
            words = search_words(query)
            if not words:
                return []
            # Every word, whole, in the title or the body, as the SQL stores match.
            find["$and"] = [
                {
                    "$or": [
                        {field: {"$regex": _word_pattern(w), "$options": "i"}}
                        for field in ("title", "body")
                    ]
                }
                for w in words
            ]
            if self.text_index is None:
                self.text_index = "contents_text" in await self._c.index_information()
            if self.text_index:
                # The text index finds the documents holding any of the words (bare words
                # are OR-ed; the words are letters and digits, never operators); the
                # patterns above keep those holding all of them.
                find["$text"] = {"$search": " ".join(words)}
        if content_type is not None:
            find["contentType"] = content_type
        if tag is not None:
            find["tags"] = tag
        if before is not None:
            at, content_id = before
            find["$or"] = [
                {"createdAt": {"$lt": at}},
                {"createdAt": at, "contentId": {"$lt": content_id}},
            ]
        order = [("createdAt", DESCENDING), ("contentId", DESCENDING)]
        cursor = self._c.find(find).sort(order).limit(limit)
        return [_content_from_doc(d) async for d in cursor]

    @_unavailable
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
        changes: dict[str, Any] = {"updatedAt": at}
        for name, value in (("title", title), ("body", body), ("tags", tags)):
            if value is not None:
                changes[name] = value
        query = {"contentId": content_id, "userId": user_id}
        if (await self._c.update_one(query, {"$set": changes})).matched_count == 0:
            return None
        doc = await self._c.find_one(query)
        return _content_from_doc(doc) if doc else None

    @_unavailable
    async def delete(self, content_id: str, user_id: str) -> bool:
        res = await self._c.delete_one({"contentId": content_id, "userId": user_id})
        return bool(res.deleted_count == 1)

    @_unavailable
    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Content]:
        query = await page_after(self._c, {"userId": user_id}, "contentId", after)
        if query is None:
            return []
        order = [("createdAt", ASCENDING), ("_id", ASCENDING)]
        return [_content_from_doc(d) async for d in self._c.find(query).sort(order).limit(limit)]

    @_unavailable
    async def delete_for_user(self, user_id: str) -> int:
        return int((await self._c.delete_many({"userId": user_id})).deleted_count)
