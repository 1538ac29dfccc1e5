"""A batch's results as a file, written as they are read: CSV or JSON Lines.

CSV cells a spreadsheet would take for a formula (starting with =, +, -, @, a tab or a
carriage return) are written with a leading apostrophe (OWASP's CSV injection advice): a
model's text, or an error echoing a hostile prompt, must not run in the reader's
spreadsheet."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from smartgen.kit import jsoncodec

FIELDS = ("row", "jobId", "status", "content", "error", "costUsd")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
LINES_PER_CHUNK = 50


def safe_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


async def csv_chunks(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(FIELDS)
    count = 0
    async for row in rows:
        writer.writerow(["" if row[f] is None else safe_cell(row[f]) for f in FIELDS])
        count += 1
        if count % LINES_PER_CHUNK == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


async def jsonl_chunks(rows: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    lines: list[str] = []
    async for row in rows:
        lines.append(jsoncodec.dumps({f: row[f] for f in FIELDS}))
        if len(lines) >= LINES_PER_CHUNK:
            yield ("\n".join(lines) + "\n").encode()
            lines.clear()
    if lines:
        yield ("\n".join(lines) + "\n").encode()
