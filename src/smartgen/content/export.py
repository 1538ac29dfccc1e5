"""The library as a file: CSV, JSON lines or one Markdown document, written a page of
contents at a time (`service.export_contents`), so a large library streams out without
ever being held whole."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from typing import Final, Literal

from smartgen.content.schemas import content_out
from smartgen.kit import jsoncodec
from smartgen.kit.times import iso_ms
from smartgen.models import Content

ExportFormat = Literal["csv", "jsonl", "markdown"]
EXTENSIONS: Final[dict[str, str]] = {"csv": "csv", "jsonl": "jsonl", "markdown": "md"}
MEDIA_TYPES: Final[dict[str, str]] = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "markdown": "text/markdown; charset=utf-8",
}
CSV_COLUMNS: Final = ("contentId", "title", "contentType", "tags", "createdAt", "updatedAt", "body")
# A spreadsheet runs a cell that begins with one of these as a formula (CSV injection):
# such cells get a leading apostrophe, which spreadsheets show as text.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def csv_page(page: list[Content], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for c in page:
        row = (
            c.content_id, c.title, c.content_type, ";".join(c.tags),
            iso_ms(c.created_at), iso_ms(c.updated_at or c.created_at), c.body,
        )  # fmt: skip
        writer.writerow([csv_cell(value) for value in row])
    return out.getvalue()


def jsonl_page(page: list[Content], *, header: bool) -> str:
    return "".join(jsoncodec.dumps(content_out(c).model_dump(mode="json")) + "\n" for c in page)


def markdown_page(page: list[Content], *, header: bool) -> str:
    """A section per content: its title as a level-1 heading, a metadata line, then the
    body as the user keeps it (their own Markdown, verbatim)."""
    sections = []
    for c in page:
        title = " ".join(c.title.split()) or "Untitled"
        facts = [c.content_type, f"saved {iso_ms(c.created_at)}"]
        if c.updated_at and c.updated_at != c.created_at:
            facts.append(f"edited {iso_ms(c.updated_at)}")
        if c.tags:
            facts.append("tags: " + ", ".join(c.tags))
        facts.append(f"id {c.content_id}")
        sections.append(f"# {title}\n\n*{' · '.join(facts)}*\n\n{c.body.rstrip()}\n\n")
    return "".join(sections)


WRITERS: Final[dict[str, Callable[..., str]]] = {
    "csv": csv_page,
    "jsonl": jsonl_page,
    "markdown": markdown_page,
}


async def export_chunks(pages: AsyncIterator[list[Content]], fmt: str) -> AsyncIterator[bytes]:
    """The file, one chunk per page (the CSV header leads even an empty library)."""
    write = WRITERS[fmt]
    first = True
    async for page in pages:
        yield write(page, header=first).encode()
        first = False
    if first and fmt == "csv":
        yield write([], header=True).encode()
