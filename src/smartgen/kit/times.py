"""UTC clock and the seed's timestamp format (ISO 8601, milliseconds, `Z`)."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """Now, in UTC, truncated to milliseconds (what every store keeps)."""
    return to_ms(datetime.now(UTC))


def as_utc(value: datetime) -> datetime:
    """Stores may hand back naive datetimes; they are always UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def to_ms(value: datetime) -> datetime:
    """Aware UTC, truncated to milliseconds, as MongoDB keeps datetimes (and so every store)."""
    value = as_utc(value)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def iso_ms(value: datetime) -> str:
    """`2026-01-11T19:34:18.356Z`, as JavaScript's `Date.toISOString()` writes it."""
    # isoformat ends in "+00:00" for an aware UTC value; it is twice as fast as strftime.
    return as_utc(value).isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    """Parse an ISO 8601 timestamp (a trailing `Z` allowed); naive means UTC."""
    return as_utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
