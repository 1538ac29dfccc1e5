"""A batch's rows from an uploaded file: CSV with a header row, or JSON Lines.

Text must be UTF-8 (a byte-order mark is dropped). CSV columns are POST /generate-content's
field names (`prompt`, `contentType`, `tone`, …); `keywords` are separated by semicolons;
an empty cell is a field left out. A file that cannot be read as a whole (not UTF-8, no
header, unknown columns, a field past the CSV reader's limit) is refused with one message;
a row that is not valid is reported as rejected and the others run."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from typing import Any, Literal

from smartgen.errors import BadRequest, ValidationFailed
from smartgen.generation.schemas import GenerationRequest

FileFormat = Literal["csv", "jsonl"]
COLUMNS = tuple(GenerationRequest.model_fields)
JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")


@dataclass(frozen=True, slots=True)
class Upload:
    data: bytes
    filename: str | None
    content_type: str | None
    fields: dict[str, str]  # the form's other fields (delaySeconds, webhookUrl)


def parse_multipart(content_type: str, body: bytes) -> Upload:
    """The `file` part of a multipart/form-data body, and its other (text) fields."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise BadRequest("The form could not be read: send multipart/form-data with a boundary")
    found: Upload | None = None
    fields: dict[str, str] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            continue
        if name == "file":
            found = Upload(payload, part.get_filename(), part.get_content_type(), {})
        else:
            fields[name] = payload.decode("utf-8", errors="replace")
    if found is None:
        raise ValidationFailed(
            "The form has no `file` field: send the CSV or JSONL file as `file`",
            details=[{"field": "file", "message": "missing"}],
        )
    return Upload(found.data, found.filename, found.content_type, fields)


def detect_format(filename: str | None, content_type: str | None, text: str) -> FileFormat:
    name = (filename or "").lower()
    kind = (content_type or "").lower()
    if name.endswith((".jsonl", ".ndjson")) or kind in JSONL_TYPES:
        return "jsonl"
    if name.endswith(".csv") or kind in ("text/csv", "application/csv"):
        return "csv"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


def decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValidationFailed(
            f"The file is not UTF-8 text (an invalid byte at offset {exc.start}, line {line}); "
            "save it as UTF-8 and send it again",
            code="invalid_file",
        ) from None


def read_rows(upload: Upload, *, max_rows: int) -> list[Any]:
    """The file's rows as dicts (a JSONL line that is not an object is kept as it is, to
    be rejected as a row)."""
    text = decode(upload.data)
    if "\x00" in text:
        raise ValidationFailed("The file contains NUL characters", code="invalid_file")
    if detect_format(upload.filename, upload.content_type, text) == "jsonl":
        return _jsonl_rows(text, max_rows)
    return _csv_rows(text, max_rows)


def too_many(max_rows: int) -> ValidationFailed:
    return ValidationFailed(
        f"A batch has at most {max_rows} rows (BATCH_MAX_ROWS); split the file",
        code="batch_too_large",
        details=[{"field": "rows", "message": f"at most {max_rows}"}],
    )


UNREADABLE = "$unreadable"


def _unreadable(error: str) -> dict[str, str]:
    """A row that cannot be read (a JSONL line that is not JSON, a CSV row of the wrong
    length): rejected as its row, with this error."""
    return {UNREADABLE: error}


def _jsonl_rows(text: str, max_rows: int) -> list[Any]:
    rows: list[Any] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(rows) >= max_rows:
            raise too_many(max_rows)
        try:
            rows.append(json.loads(line))
        except ValueError:
            rows.append(_unreadable("not valid JSON"))
    return rows


def _csv_rows(text: str, max_rows: int) -> list[Any]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Any] = []
    try:
        header: list[str] | None = None
        for record in reader:
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = _header(record)
                continue
            if len(rows) >= max_rows:
                raise too_many(max_rows)
            rows.append(_csv_row(header, record))
    except csv.Error as exc:
        raise ValidationFailed(
            f"The CSV file could not be read at line {reader.line_num}: {exc}",
            code="invalid_file",
        ) from None
    if header is None:
        raise ValidationFailed(
            "The CSV file is empty: give a header row (prompt,contentType,…) and rows",
            code="invalid_file",
        )
    return rows


def _header(record: list[str]) -> list[str]:
    names = [cell.strip() for cell in record]
    unknown = [name for name in names if name not in COLUMNS]
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise ValidationFailed(
            f"Unknown CSV columns: {shown}; the columns are: {', '.join(COLUMNS)}",
            code="invalid_file",
            details=[{"field": "header", "message": "unknown columns"}],
        )
    if len(set(names)) != len(names):
        raise ValidationFailed("A CSV column is named twice", code="invalid_file")
    missing = [name for name in ("prompt", "contentType") if name not in names]
    if missing:
        raise ValidationFailed(
            f"The CSV header lacks the column(s) {', '.join(missing)}", code="invalid_file"
        )
    return names


def _csv_row(header: list[str], record: list[str]) -> Any:
    if len(record) != len(header):
        return _unreadable(f"has {len(record)} cells; the header has {len(header)}")
    row: dict[str, Any] = {}
    for name, cell in zip(header, record, strict=True):
        if not cell.strip():
            continue
        row[name] = [k for k in cell.split(";") if k.strip()] if name == "keywords" else cell
    return row


def unreadable(row: Any) -> str | None:
    """Why a row read from a file cannot be a job before validation, if it cannot."""
    if isinstance(row, dict) and len(row) == 1 and isinstance(row.get(UNREADABLE), str):
        return str(row[UNREADABLE])
    return None
