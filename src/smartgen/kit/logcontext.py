"""Who a log line is about: the request, user and job being served, carried by contextvars
so that every line written while serving them names them, and a formatter writing one JSON
object per line (`LOG_FORMAT=json`).

The HTTP middleware sets `request_id`, authentication sets `user_id`, the queue runner sets
`job_id` (and the `request_id` that queued the job) for one delivery. Each asyncio task
runs in a copy of its creator's context, so a value set while serving one request or job
never leaks into another.
"""

from __future__ import annotations

import logging
import re
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from smartgen.kit import jsoncodec
from smartgen.kit.redaction import redact
from smartgen.kit.text import escape_controls

request_id: ContextVar[str | None] = ContextVar("smartgen_request_id", default=None)
user_id: ContextVar[str | None] = ContextVar("smartgen_user_id", default=None)
job_id: ContextVar[str | None] = ContextVar("smartgen_job_id", default=None)

# A caller's X-Request-ID is kept when it is short and plain (it goes into headers, logs
# and error bodies); anything else is replaced by one of ours.
MAX_REQUEST_ID = 128
_SANE_ID = re.compile(r"[A-Za-z0-9._:@=+/-]{1,128}")


def sane_request_id(value: object) -> str | None:
    """The caller's request id when it is safe to echo and log, else None."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if _SANE_ID.fullmatch(value) else None


def context_fields() -> dict[str, str]:
    """The ids known in the current context, by their JSON names."""
    fields: dict[str, str] = {}
    value = request_id.get()
    if value:
        fields["requestId"] = value
    value = user_id.get()
    if value:
        fields["userId"] = value
    value = job_id.get()
    if value:
        fields["jobId"] = value
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601 with milliseconds), level, logger,
    message, the context's requestId / userId / jobId, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(context_fields())
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = redact(record.exc_text)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return jsoncodec.dumps(line)


class TextFormatter(logging.Formatter):
    """Human-readable lines whose message cannot break the line: control characters in it
    (a provider's error text with a newline, an escape sequence) are written escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_controls(record.message)
        return super().formatMessage(safe)

    def formatException(self, ei: Any) -> str:
        # A traceback can quote a URL or a header with a credential in it.
        return redact(super().formatException(ei))
