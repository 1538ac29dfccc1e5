"""A user's usage over a period, summed by the store, and this month's budgets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from smartgen.config import Settings
from smartgen.errors import ValidationFailed
from smartgen.generation.budget import month_bounds, month_of
from smartgen.kit.times import as_utc, utcnow
from smartgen.models import UsageRow
from smartgen.ports import Budgets
from smartgen.store.base import Store

MAX_PERIOD = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class Budget:
    month: str
    resets_at: datetime
    tokens: tuple[int, int] | None  # (limit, used)
    cost: tuple[float, float] | None


def boundary(value: date | datetime | None) -> datetime | None:
    """A date is its first instant (UTC); a datetime without a zone is UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.combine(value, time()))


def period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    """[from, to): by default the current calendar month (UTC); a month from `from`
    when only it is given; at most 366 days."""
    if start is None and end is None:
        return month_bounds(utcnow())
    if start is None:
        assert end is not None
        start = month_bounds(end - timedelta(microseconds=1))[0]
    if end is None:
        end = month_bounds(start)[1]
    if end <= start:
        raise ValidationFailed(
            "to: must be after from", details=[{"field": "to", "message": "before from"}]
        )
    if end - start > MAX_PERIOD:
        raise ValidationFailed(
            "to: the period may span at most 366 days",
            details=[{"field": "to", "message": "period too long"}],
        )
    return start, end


async def usage(
    *, store: Store, user_id: str, start: datetime, end: datetime, group_by: str
) -> list[UsageRow]:
    return await store.jobs.usage(user_id, start=start, end=end, group_by=group_by)


async def budget(*, settings: Settings, budgets: Budgets, user_id: str) -> Budget | None:
    token_limit, cost_limit = settings.user_monthly_token_budget, settings.user_monthly_cost_budget
    if token_limit <= 0 and cost_limit <= 0:
        return None
    now = utcnow()
    month = month_of(now)
    tokens, cost = await budgets.used(user_id, month)
    return Budget(
        month=month,
        resets_at=month_bounds(now)[1],
        tokens=(token_limit, tokens) if token_limit > 0 else None,
        cost=(cost_limit, cost) if cost_limit > 0 else None,
    )
