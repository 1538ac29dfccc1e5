"""/usage: what the caller's jobs used and cost, per day, content type or model."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BeforeValidator

from smartgen.api.deps import BudgetsDep, ReadUser, SettingsDep, StoreDep
from smartgen.errors import error_responses
from smartgen.kit.times import iso_ms
from smartgen.usage import service
from smartgen.usage.schemas import BudgetLine, BudgetOut, UsageOut, group_out, totals

router = APIRouter(prefix="/usage", tags=["usage"], responses=error_responses(401, 422, 503))


def _not_a_number(value: Any) -> Any:
    """A date or an ISO 8601 time, never a bare number (which pydantic would read as Unix
    seconds)."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", value):
        raise ValueError("must be a date (YYYY-MM-DD) or an ISO 8601 time")
    return value


When = Annotated[
    datetime | date | None,
    BeforeValidator(_not_a_number),
    Query(description="A date (YYYY-MM-DD, UTC) or an ISO 8601 time; `to` is exclusive"),
]


@router.get("", response_model_by_alias=True)
async def get_usage(
    user: ReadUser,
    store: StoreDep,
    settings: SettingsDep,
    budgets: BudgetsDep,
    from_: Annotated[
        datetime | date | None,
        BeforeValidator(_not_a_number),
        Query(alias="from", description="A date (YYYY-MM-DD, UTC) or an ISO 8601 time"),
    ] = None,
    to: When = None,
    groupBy: Literal["day", "contentType", "model"] = "day",
) -> UsageOut:
    """Your jobs created in [from, to) (default: this calendar month, UTC): jobs by
    status, tokens and cost, per group, and this month's budgets."""
    start, end = service.period(service.boundary(from_), service.boundary(to))
    rows = await service.usage(
        store=store, user_id=user.user_id, start=start, end=end, group_by=groupBy
    )
    found = await service.budget(settings=settings, budgets=budgets, user_id=user.user_id)
    budget = None
    if found is not None:
        budget = BudgetOut(month=found.month, resetsAt=iso_ms(found.resets_at))
        if found.tokens is not None:
            limit, used = found.tokens
            budget.tokens = BudgetLine(limit=limit, used=used, left=max(0, limit - used))
        if found.cost is not None:
            limit_c, used_c = found.cost
            budget.cost = BudgetLine(
                limit=limit_c, used=round(used_c, 9), left=round(max(0.0, limit_c - used_c), 9)
            )
    return UsageOut.model_validate(
        {
            "from": iso_ms(start),
            "to": iso_ms(end),
            "groupBy": groupBy,
            "totals": totals(rows),
            "groups": [group_out(r) for r in rows],
            "budget": budget,
        }
    )
