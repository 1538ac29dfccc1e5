"""What smartgen keeps of a model provider's answer: untrusted input, bounded and cleaned.

A provider (or whatever answers at BASE_URL) may send anything: a huge or deeply nested
body, lone surrogates the databases refuse, the API key echoed back, a `model` of
megabytes, a `usage` object of any shape, an `error.code` of `true`. What leaves this
module is what the worker stores and every status read returns, so each part is checked
here once: the content is capped in line with `max_tokens`, `model` is a short single
line, `usage` keeps known numeric fields only, the key is redacted in its plain and
encoded forms, and an answer that cannot be read at all is an immediate, non-retried
"malformed answer" (asking again would get the same).
"""

from __future__ import annotations

import base64
import functools
import math
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from smartgen.kit import jsoncodec
from smartgen.llm.errors import LLMError

# A token is about four characters of English; 32 leaves room for long tokens (runs of
# spaces, code) while a provider that ignores max_tokens cannot store megabytes.
CHARS_PER_TOKEN = 32
MIN_CONTENT_CHARS = 4096
MAX_MODEL_CHARS = 100
MAX_FINISH_REASON_CHARS = 32
# Fragments of the key this long or longer are redacted wherever they appear.
KEY_FRAGMENT_CHARS = 16
USAGE_NUMBERS = ("prompt_tokens", "completion_tokens", "total_tokens", "cost")
USAGE_DETAILS = {
    "prompt_tokens_details": ("cached_tokens", "audio_tokens"),
    "completion_tokens_details": ("reasoning_tokens", "audio_tokens"),
}
USAGE_MAX = 1e12
REDACTED = "[redacted]"
MALFORMED = "the model provider sent a malformed answer"

_FINISH_REASON = re.compile(r"[a-z_]{1,32}")
# Control characters (C0 but tab and newline, DEL, C1) and the lone surrogates UTF-8
# cannot encode.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")


def loads(raw: bytes | str) -> Any:
    """The JSON document in `raw`; None when it is not JSON at all (a proxy's HTML page,
    a cut-off body). A document nested too deeply to parse is a malformed answer."""
    try:
        return jsoncodec.loads(raw)
    except RecursionError:
        raise LLMError(f"{MALFORMED} (nested too deeply)", retryable=False) from None
    except ValueError:
        return None


def content_limit(max_tokens: int) -> int:
    """The most characters of content kept for an answer of at most `max_tokens`."""
    return max(MIN_CONTENT_CHARS, max_tokens * CHARS_PER_TOKEN)


def error_code(value: Any) -> int | None:
    """An `error.code` as an HTTP status: a whole number in 100..599 only (`true` is not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 100 <= value <= 599 else None


def finish_reason(choice: Any) -> str | None:
    """`finish_reason` of a choice when it is a short lowercase word ("stop", "length")."""
    value = choice.get("finish_reason") if isinstance(choice, dict) else None
    if isinstance(value, str) and _FINISH_REASON.fullmatch(value):
        return value
    return None


def usage(value: Any) -> dict[str, Any] | None:
    """The known numeric fields of a `usage` object (finite, 0..1e12); None if none."""
    if not isinstance(value, dict):
        return None
    kept: dict[str, Any] = {}
    for name in USAGE_NUMBERS:
        number = _number(value.get(name))
        if number is not None:
            kept[name] = number
    for name, parts in USAGE_DETAILS.items():
        details = value.get(name)
        if isinstance(details, dict):
            inner = {p: n for p in parts if (n := _number(details.get(p))) is not None}
            if inner:
                kept[name] = inner
    return kept or None


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if 0 <= value <= USAGE_MAX else None


def without_surrogates(text: str) -> str:
    """`text` with lone surrogates replaced (for messages: never fail a write over one)."""
    return _SURROGATES.sub("\ufffd", text)


def check_text(text: str) -> str:
    """Model text as stored: no NUL (PostgreSQL cannot store it); a lone surrogate (which
    no database can store as UTF-8) makes the answer malformed."""
    if _SURROGATES.search(text):
        raise LLMError(f"{MALFORMED} (invalid Unicode)", retryable=False)
    return text.replace("\x00", "")


@functools.lru_cache(maxsize=4)
def _lowered_forms(secret: str) -> tuple[tuple[str, str], ...]:
    """The key's forms, each with its lower case: worked out once per key, not per
    answer (every completion is redacted)."""
    return tuple((form, form.lower()) for form in Redactor._forms(secret))


@dataclass(frozen=True)
class Redactor:
    """Removes the API key from text a provider sent: the key itself in any case, its
    URL-encoded, base64 and hex forms, and any fragment of KEY_FRAGMENT_CHARS or more."""

    secret: str | None

    def __call__(self, text: str) -> str:
        secret = self.secret
        if not secret or not text:
            return text
        lowered = text.lower()
        for form, form_lowered in _lowered_forms(secret):
            if form_lowered in lowered:
                text = re.sub(re.escape(form), REDACTED, text, flags=re.IGNORECASE)
                lowered = text.lower()
        if len(secret) < KEY_FRAGMENT_CHARS:
            return text
        return self._fragments(text, secret)

    @staticmethod
    def _forms(secret: str) -> list[str]:
        raw = secret.encode()
        forms = [
            secret,
            quote(secret, safe=""),
            base64.b64encode(raw).decode(),
            base64.b64encode(raw).decode().rstrip("="),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            raw.hex(),
        ]
        return sorted({f for f in forms if f}, key=len, reverse=True)

    @staticmethod
    def _fragments(text: str, secret: str) -> str:
        """Redact every run of text made of windows of the key (linear in the text for
        each of the key's windows)."""
        lowered, key = text.lower(), secret.lower()
        covered = bytearray(len(text))
        found = False
        for start in range(len(key) - KEY_FRAGMENT_CHARS + 1):
            window = key[start : start + KEY_FRAGMENT_CHARS]
            at = lowered.find(window)
            while at != -1:
                covered[at : at + KEY_FRAGMENT_CHARS] = b"\x01" * KEY_FRAGMENT_CHARS
                found = True
                at = lowered.find(window, at + 1)
        if not found:
            return text
        out: list[str] = []
        i = 0
        while i < len(text):
            if covered[i]:
                while i < len(text) and covered[i]:
                    i += 1
                out.append(REDACTED)
            else:
                j = i
                while j < len(text) and not covered[j]:
                    j += 1
                out.append(text[i:j])
                i = j
        return "".join(out)


def model_name(value: Any, fallback: str, redact: Redactor) -> str:
    """The answer's `model`: one short line without control characters, else `fallback`."""
    if not isinstance(value, str):
        return fallback
    # Cut first: the work below is linear, but a provider may send megabytes.
    name = " ".join(_CONTROLS.sub(" ", without_surrogates(value[: MAX_MODEL_CHARS * 4])).split())
    name = redact(name)[:MAX_MODEL_CHARS]
    return name or fallback
