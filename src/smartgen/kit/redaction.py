"""Secrets out of log lines: every record of the process passes through `redact` before
any handler sees it (uvicorn's access log included, whose lines carry query strings:
`GET /socket.io/?token=…`, `GET /events?token=…`).

Redacted: the values of query parameters whose name speaks of a secret (token, key,
secret, password, auth, signature, session, code, …), `Bearer …` credentials, and
anything shaped like a JWT. The patterns are bounded and linear, and run only on records
a logger is about to emit."""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "[REDACTED]"
_NAME = r"[^=&\s\"'#<>?]{0,40}"
_SECRET_PARAM = re.compile(
    rf"([?&;]{_NAME}?(?:token|key|secret|passw|pwd|auth|signature|sig|jwt|session|code|credential)"
    rf"{_NAME}=)[^&\s\"'#<>]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(\bBearer\s+)[^\s\"',;]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    if "=" in text:
        text = _SECRET_PARAM.sub(lambda m: m.group(1) + MASK, text)
    if "eyJ" in text:
        text = _JWT.sub(MASK, text)
    if "earer" in text:
        text = _BEARER.sub(lambda m: m.group(1) + MASK, text)
    return text


def _clean(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


def install_log_redaction() -> None:
    """Redact every log record this process creates (idempotent). The message and each
    string argument are redacted apart, so formatters that read `args` (uvicorn's access
    formatter) keep working."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "smartgen_redacting", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        record.msg = _clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return record

    factory.smartgen_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
