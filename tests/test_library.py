"""The content library API (issue 16) over a real app, Redis and store: pages, search and
filters on GET /contents, edits and deletion, the streamed export in each format, and a
job's feedback (on the job, in GET /usage, in the account export); each error status, and
another user's ids and cursors."""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
from datetime import timedelta
from typing import Any

import httpx

from smartgen.config import Settings
from smartgen.kit.times import utcnow
from smartgen.models import Completion, Content, Job, JobStatus
from tests.conftest import ApiServer, all_stores, register

HOSTILE = [
    '"', '"sourdough', "sourdough*", "-sourdough", "NEAR(sourdough starter)", "sourdough OR x",
    "'; DROP TABLE contents; --", "\\", "%_", "title:sourdough", "{$ne: 1}", ".*", "😀", "\x00",
    "(", "sourdough & !x", "<script>alert(1)</script>", "a" * 500,
]  # fmt: skip


async def seed(api: ApiServer, user: dict[str, Any], n: int, **kw: Any) -> list[Content]:
    """`n` saved contents for `user` written through the store, a millisecond apart (some
    in the same one), oldest first."""
    base = utcnow() - timedelta(hours=1)
    out = []
    for i in range(n):
        fields: dict[str, Any] = {
            "content_id": str(uuid.uuid4()),
            "user_id": user["userId"],
            "job_id": str(uuid.uuid4()),
            "title": f"Item {i}",
            "body": f"Body number {i}",
            "content_type": "Blog Post Outline",
            "created_at": base + timedelta(milliseconds=i // 2),
            **kw,
        }
        content, created = await api.services.store.contents.create_once(Content(**fields))
        assert created
        out.append(content)
    return out


async def completed_job(api: ApiServer, user: dict[str, Any], **kw: Any) -> str:
    now = utcnow()
    job = Job(
        job_id=str(uuid.uuid4()), user_id=user["userId"], status=JobStatus.queued,
        prompt="Sourdough", content_type=kw.get("content_type", "Blog Post Outline"),
        scheduled_for=now, created_at=now, updated_at=now,
    )  # fmt: skip
    store = api.services.store
    assert await store.jobs.create(job)
    if kw.get("complete", True):
        assert await store.jobs.mark_processing(job.job_id, at=now, attempt=1)
        assert await store.jobs.mark_completed(
            job.job_id, result=Completion("# Sourdough\n\nFeed it.", "m"), at=now
        )
    return job.job_id


def cursor_of(raw: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw).encode()).decode().rstrip("=")


@all_stores
async def test_library_pages_search_edit_and_delete(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    h = alice["headers"]
    items = await seed(api, alice, 5)
    bread = (
        await seed(api, alice, 1, title="Sourdough basics", body="Feed the starter daily.",
                   tags=["bread"], content_type="Product Description",
                   created_at=utcnow())  # the newest, whatever the clock did between seeds
    )[0]  # fmt: skip
    bobs = (await seed(api, bob, 3, title="Sourdough for bob"))[0]
    ordered = sorted(items, key=lambda c: (c.created_at, c.content_id), reverse=True)
    newest_first = [bread.content_id] + [c.content_id for c in ordered]

    # No page parameter: the plain array, as before.
    r = await client.get("/contents", headers=h)
    assert r.status_code == 200 and isinstance(r.json(), list)
    assert [c["contentId"] for c in r.json()] == newest_first
    assert r.json()[0]["tags"] == ["bread"] and r.json()[1]["tags"] == []
    assert r.json()[0]["updatedAt"] == r.json()[0]["createdAt"]

    # Pages walk every item once, newest first (ties broken the same way every time).
    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        r = await client.get("/contents", params=params, headers=h)
        assert r.status_code == 200, r.text
        page = r.json()
        assert set(page) == {"items", "nextCursor"} and len(page["items"]) <= 2
        seen += [c["contentId"] for c in page["items"]]
        if (cursor := page["nextCursor"]) is None:
            break
    assert seen == newest_first
    r = await client.get("/contents", params={"limit": 100}, headers=h)
    assert r.json()["nextCursor"] is None and len(r.json()["items"]) == 6

    # Search, filters, both together.
    async def ids(**params: Any) -> list[str]:
        r = await client.get("/contents", params=params, headers=h)
        assert r.status_code == 200, r.text
        assert all(c["userId"] == alice["userId"] for c in r.json()["items"])
        return [c["contentId"] for c in r.json()["items"]]

    assert await ids(q="SOURDOUGH") == [bread.content_id]
    assert await ids(q="starter sourdough") == [bread.content_id]
    assert await ids(q="number", limit=3) == newest_first[1:4]
    assert await ids(q="number 3") == [items[3].content_id]
    assert await ids(contentType="Product Description") == [bread.content_id]
    assert await ids(tag="bread") == [bread.content_id]
    assert await ids(tag="Bread") == []
    assert await ids(q="sourdough", contentType="Blog Post Outline") == []
    for q in HOSTILE:
        await ids(q=q)  # 200, only alice's rows
    assert await ids(q='"sourdough') == [bread.content_id]
    assert await ids(q="-sourdough") == [bread.content_id]
    assert await ids(q="  ") == newest_first  # a cleared search box
    assert await ids(q="*!") == []  # no word to look for

    # Bad parameters: 422 with the API's error body, never a 500.
    bad = [
        {"limit": 0}, {"limit": 101}, {"limit": "x"}, {"contentType": "Poem"},
        {"tag": ""}, {"tag": "x" * 41}, {"tag": "a\x00b"}, {"q": "x" * 501},
    ]  # fmt: skip
    for params in bad:
        r = await client.get("/contents", params=params, headers=h)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["error"] == "validation_error", r.text
    forged = [
        "garbage", "", "====", "x" * 201, cursor_of([1, 2]), cursor_of(["1", "id"]),
        cursor_of([-1, "id"]), cursor_of([10**16, "id"]), cursor_of({"a": 1}),
        cursor_of([True, "id"]), cursor_of([1, "a'; --"]), cursor_of([1, "x" * 65]),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(), cursor_of([1, "id", 3]),
    ]  # fmt: skip
    for cursor in forged:
        r = await client.get("/contents", params={"cursor": cursor}, headers=h)
        assert r.status_code == 422, (cursor, r.text)
        assert r.json()["error"] in ("invalid_cursor", "validation_error"), r.text
    assert (await client.get("/contents", params={"cursor": "garbage"}, headers=h)).json()[
        "error"
    ] == "invalid_cursor"
    # Bob's cursor in alice's hands moves only within alice's rows.
    r = await client.get("/contents", params={"limit": 1}, headers=bob["headers"])
    bobs_cursor = r.json()["nextCursor"]
    r = await client.get("/contents", params={"cursor": bobs_cursor}, headers=h)
    assert r.status_code == 200
    assert all(c["userId"] == alice["userId"] for c in r.json()["items"])

    # Edit: trimmed title, tags cleaned; the search follows.
    url = f"/contents/{bread.content_id}"
    patch = {"title": "  Rye loaf  ", "tags": [" bread ", "Weekend", "bread", "weekend"]}
    r = await client.patch(url, json=patch, headers=h)
    assert r.status_code == 200, r.text
    edited = r.json()
    assert (edited["title"], edited["tags"]) == ("Rye loaf", ["bread", "Weekend", "weekend"])
    assert edited["body"] == "Feed the starter daily."
    assert edited["updatedAt"] > edited["createdAt"]
    assert await ids(q="rye") == [bread.content_id]
    assert await ids(q="sourdough") == []
    r = await client.patch(url, json={"body": "Caraway and rye."}, headers=h)
    assert r.status_code == 200 and r.json()["title"] == "Rye loaf"
    assert await ids(q="caraway") == [bread.content_id]
    assert (await client.get(url, headers=h)).json() == r.json()
    for body in [
        {}, {"title": "   "}, {"title": "x" * 201}, {"body": ""}, {"body": "x" * 100_001},
        {"tags": ["x"] * 21}, {"tags": ["x" * 41]}, {"tags": ["  "]}, {"tags": "bread"},
        {"title": "a\x00b"}, {"colour": "red"}, {"title": None},
    ]:  # fmt: skip
        r = await client.patch(url, json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
    broken = {**h, "Content-Type": "application/json"}
    assert (await client.patch(url, content=b"{", headers=broken)).status_code == 400
    assert (await client.patch(url, content=b"{}", headers=h)).status_code == 415
    # Another user's content, an unknown or malformed id: 404, and nothing changes.
    refused = [
        (bob, url), (alice, f"/contents/{bobs.content_id}"),
        (alice, f"/contents/{uuid.uuid4()}"), (alice, "/contents/not-an-id"),
    ]  # fmt: skip
    for who, target in refused:
        r = await client.patch(target, json={"title": "Mine"}, headers=who["headers"])
        assert r.status_code == 404 and r.json()["error"] == "content_not_found", r.text
        r = await client.delete(target, headers=who["headers"])
        assert r.status_code == 404, r.text
    assert (await client.get(url, headers=h)).json()["title"] == "Rye loaf"
    r = await client.get(f"/contents/{bobs.content_id}", headers=bob["headers"])
    assert r.json()["title"] == "Sourdough for bob"
    assert (await client.patch(url, json={"title": "x"})).status_code == 401

    r = await client.delete(url, headers=h)
    assert r.status_code == 204 and r.content == b""
    assert (await client.delete(url, headers=h)).status_code == 404
    assert (await client.get(url, headers=h)).status_code == 404
    assert await ids(q="caraway") == []
    assert bread.content_id not in await ids(limit=100)


async def test_export_streams_each_format_and_defuses_formulas(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    h = alice["headers"]
    many = await seed(api, alice, 230)  # more than two of the store's export pages
    hostile = (
        await seed(api, alice, 1, title="=HYPERLINK(\"http://x\")", body="+1+2\n\n## Keep me",
                   tags=["-x", "@y", "plain"], content_type="Product Description")
    )[0]  # fmt: skip
    ordered = sorted(many, key=lambda c: (c.created_at, c.content_id), reverse=True)
    ids = [hostile.content_id] + [c.content_id for c in ordered]  # newest first

    r = await client.get("/contents/export", params={"format": "csv"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="smartgen-contents.csv"'
    assert "content-length" not in r.headers  # streamed
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == [
        "contentId",
        "title",
        "contentType",
        "tags",
        "createdAt",
        "updatedAt",
        "body",
    ]
    assert [row[0] for row in rows[1:]] == ids  # newest first, each once
    last = rows[1]
    assert last[1] == '\'=HYPERLINK("http://x")'
    assert last[3] == "'-x;@y;plain"  # the cell is what a spreadsheet sees
    assert last[6] == "'+1+2\n\n## Keep me"
    assert rows[-1][1:4] == [ordered[-1].title, "Blog Post Outline", ""]
    assert all(
        not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for cell in row
    )

    # JSON lines, read a chunk at a time: the answer arrives in several pieces.
    chunks = 0
    async with client.stream("GET", "/contents/export", headers=h) as r:
        assert r.status_code == 200
        assert r.headers["content-disposition"].endswith('filename="smartgen-contents.jsonl"')
        body = b""
        async for chunk in r.aiter_raw():
            chunks += 1
            body += chunk
    assert chunks > 1
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert [c["contentId"] for c in lines] == ids
    assert lines[0]["tags"] == ["-x", "@y", "plain"]  # JSON keeps the data as it is
    assert lines[0]["title"] == hostile.title and set(lines[-1]) >= {"updatedAt", "tags", "body"}

    r = await client.get("/contents/export", params={"format": "markdown"}, headers=h)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-disposition"].endswith('filename="smartgen-contents.md"')
    sections = r.text.split("\n# ")
    assert len(sections) == len(ids) and sections[-1].startswith(ordered[-1].title + "\n")
    assert sections[0].startswith('# =HYPERLINK("http://x")\n\n*Product Description · ')
    assert "tags: -x, @y, plain" in sections[0]
    assert "\n+1+2\n\n## Keep me\n" in sections[0]  # the body verbatim

    for fmt in ("xml", "", "CSV"):
        r = await client.get("/contents/export", params={"format": fmt}, headers=h)
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert (await client.get("/contents/export")).status_code == 401
    r = await client.get("/contents/export", params={"format": "csv"}, headers=bob["headers"])
    assert list(csv.reader(io.StringIO(r.text)))[1:] == []  # only the header
    r = await client.get("/contents/export", params={"format": "jsonl"}, headers=bob["headers"])
    assert r.status_code == 200 and r.content == b""


async def test_export_is_rate_limited_with_the_account_export(settings: Settings) -> None:
    async with (
        ApiServer(settings.model_copy(update={"save_rate_limit": 4})) as api,
        httpx.AsyncClient(base_url=api.url, timeout=10) as client,
    ):
        user = await register(client)
        codes = []
        for i in range(5):
            path = "/auth/me/export" if i % 2 else "/contents/export"
            codes.append((await client.get(path, headers=user["headers"])).status_code)
        assert codes == [200] * 4 + [429]
        r = await client.get("/contents/export", headers=(await register(client))["headers"])
        assert r.status_code == 200  # per user


async def test_feedback_on_the_job_in_usage_and_in_the_account(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    alice, bob = await register(client), await register(client)
    h = alice["headers"]
    liked = await completed_job(api, alice, content_type="Product Description")
    other = await completed_job(api, alice, content_type="Product Description")
    queued = await completed_job(api, alice, complete=False)
    bobs = await completed_job(api, bob)

    r = await client.get("/usage", params={"groupBy": "contentType"}, headers=h)
    assert r.json()["totals"]["likedShare"] is None and r.json()["totals"]["liked"] == 0

    url = f"/generate-content/{liked}/feedback"
    r = await client.post(url, json={"rating": "like"}, headers=h)
    assert r.status_code == 200, r.text
    assert (r.json()["jobId"], r.json()["rating"], r.json()["comment"]) == (liked, "like", None)
    assert r.json()["updatedAt"].endswith("Z")
    job = (await client.get(f"/generate-content/{liked}", headers=h)).json()
    assert job["feedback"] == {"rating": "like"}
    r = await client.post(url, json={"rating": "dislike", "comment": "Too long"}, headers=h)
    assert r.status_code == 200 and r.json()["rating"] == "dislike"
    job = (await client.get(f"/generate-content/{liked}", headers=h)).json()
    assert job["feedback"] == {"rating": "dislike", "comment": "Too long"}
    r = await client.post(f"/generate-content/{other}/feedback", json={"rating": "like"}, headers=h)
    assert r.status_code == 200
    listed = {
        j["jobId"]: j.get("feedback")
        for j in (await client.get("/generate-content", headers=h)).json()
    }
    assert listed[other] == {"rating": "like"} and listed[queued] is None

    r = await client.get("/usage", params={"groupBy": "contentType"}, headers=h)
    groups = {g["key"]: g for g in r.json()["groups"]}
    product = groups["Product Description"]
    assert (product["liked"], product["disliked"], product["likedShare"]) == (1, 1, 0.5)
    assert groups["Blog Post Outline"]["likedShare"] is None
    assert r.json()["totals"]["likedShare"] == 0.5

    # The account export carries the feedback, and the saved content's tags.
    r = await client.post(f"/generate-content/{liked}/save", headers=h)
    content_id = r.json()["contentId"]
    await client.patch(f"/contents/{content_id}", json={"tags": ["keep"]}, headers=h)
    document = (await client.get("/auth/me/export", headers=h)).json()
    exported = {j["jobId"]: j for j in document["jobs"]}
    assert exported[liked]["feedback"] == {"rating": "dislike", "comment": "Too long"}
    assert document["contents"][0]["tags"] == ["keep"]

    # Refusals.
    r = await client.post(
        f"/generate-content/{queued}/feedback", json={"rating": "like"}, headers=h
    )
    assert r.status_code == 409 and r.json()["error"] == "job_not_completed"
    for target in (bobs, str(uuid.uuid4()), "not-a-job"):
        r = await client.post(
            f"/generate-content/{target}/feedback", json={"rating": "like"}, headers=h
        )
        assert r.status_code == 404, r.text
        r = await client.delete(f"/generate-content/{target}/feedback", headers=h)
        assert r.status_code == 404, r.text
    bad = [
        {"rating": "love"}, {}, {"rating": "like", "comment": "x" * 2001},
        {"rating": "like", "extra": 1}, {"rating": "like", "comment": "a\x00"},
    ]  # fmt: skip
    for body in bad:
        r = await client.post(url, json=body, headers=h)
        assert r.status_code == 422, (body, r.text)
    assert (await client.post(url, json={"rating": "like"})).status_code == 401
    bobs_job = (await client.get(f"/generate-content/{bobs}", headers=bob["headers"])).json()
    assert "feedback" not in bobs_job

    r = await client.delete(url, headers=h)
    assert r.status_code == 204
    assert (await client.delete(url, headers=h)).status_code == 204  # nothing left: fine
    assert "feedback" not in (await client.get(f"/generate-content/{liked}", headers=h)).json()
    r = await client.get("/usage", params={"groupBy": "contentType"}, headers=h)
    assert r.json()["totals"]["likedShare"] == 1.0


async def test_the_export_path_is_not_a_content_id(client: httpx.AsyncClient) -> None:
    user = await register(client)
    r = await client.options("/contents/export", headers=user["headers"])
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    r = await client.patch("/contents/export", json={"title": "x"}, headers=user["headers"])
    assert r.status_code == 405
    r = await client.options(f"/contents/{uuid.uuid4()}", headers=user["headers"])
    assert r.headers["allow"] == "DELETE, GET, HEAD, PATCH"
    r = await client.head("/contents/export?format=csv", headers=user["headers"])
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"].startswith("text/csv")
    schema = (await client.get("/openapi.json")).json()
    assert {"/contents/export", "/contents/{contentId}"} <= set(schema["paths"])


async def test_export_pages_survive_edits_and_deletions_between_them(
    api: ApiServer, client: httpx.AsyncClient
) -> None:
    from smartgen.content.service import EXPORT_PAGE, export_contents

    user = await register(client)
    store = api.services.store
    items = await seed(api, user, EXPORT_PAGE * 2 + 5)
    pages = export_contents(store=store, user_id=user["userId"])
    first = await anext(pages)
    assert len(first) == EXPORT_PAGE
    # The row the next page would start after is deleted, another is edited, in between.
    assert await store.contents.delete(first[-1].content_id, user["userId"])
    assert await store.contents.update(first[0].content_id, user["userId"], at=utcnow(), title="x")
    rest = [c async for page in pages for c in page]
    assert len(rest) == len(items) - EXPORT_PAGE
    assert {c.content_id for c in first} | {c.content_id for c in rest} == {
        c.content_id for c in items
    }
