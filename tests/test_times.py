"""The seed's timestamp format: what JavaScript's `Date.toISOString()` writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from smartgen.kit.times import iso_ms, parse_iso, utcnow


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 1, 11, 19, 34, 18, 356999, tzinfo=UTC), "2026-01-11T19:34:18.356Z"),
        (datetime(2026, 1, 11, 19, 34, 18, tzinfo=UTC), "2026-01-11T19:34:18.000Z"),
        # Another offset is converted; a naive value is UTC.
        (
            datetime(2026, 1, 11, 21, 34, 18, 5000, tzinfo=timezone(timedelta(hours=2))),
            "2026-01-11T19:34:18.005Z",
        ),
        (datetime(2026, 12, 31, 23, 59, 59, 999999), "2026-12-31T23:59:59.999Z"),
        # Four-digit years, as toISOString pads them.
        (datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC), "0999-03-04T05:06:07.000Z"),
    ],
)
def test_iso_ms(value: datetime, text: str) -> None:
    assert iso_ms(value) == text


def test_parse_iso_round_trips_and_accepts_z_offsets_and_naive() -> None:
    now = utcnow()
    assert now.microsecond % 1000 == 0 and now.tzinfo is UTC
    assert parse_iso(iso_ms(now)) == now
    assert parse_iso("2026-01-11T21:34:18.356+02:00") == datetime(
        2026, 1, 11, 19, 34, 18, 356000, tzinfo=UTC
    )
    assert parse_iso(" 2026-01-11T19:34:18 ") == datetime(2026, 1, 11, 19, 34, 18, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_iso("yesterday")
