"""Checks on text a client sends that the stores will keep."""

from __future__ import annotations


def without_nul(value: str) -> str:
    """A pydantic validator: PostgreSQL cannot store NUL (U+0000) in text, so no store
    accepts it (all three behave alike, and a bad field is the caller's 422, never a 500
    or a failed write for anyone else's request batched with it)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value
