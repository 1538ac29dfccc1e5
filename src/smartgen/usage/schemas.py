"""Bodies of GET /usage."""

from __future__ import annotations

from pydantic import BaseModel, Field

from smartgen.models import UsageRow


class UsageTotals(BaseModel):
    jobs: int
    byStatus: dict[str, int] = Field(description="Jobs per status")
    promptTokens: int
    completionTokens: int
    totalTokens: int
    cost: float = Field(description="USD credits, as the provider reported them")
    pricedJobs: int = Field(description="Jobs whose cost the provider reported")
    liked: int = Field(0, description="Jobs their owner rated like")
    disliked: int = Field(0, description="Jobs their owner rated dislike")
    likedShare: float | None = Field(
        None, description="liked / (liked + disliked); null when none was rated"
    )


class UsageGroup(UsageTotals):
    key: str | None = Field(
        description="The day (YYYY-MM-DD, UTC), content type or model; null: jobs without "
        "a model yet (queued, failed, cancelled)"
    )


class BudgetLine(BaseModel):
    limit: float
    used: float = Field(description="Used this month, reservations of queued jobs included")
    left: float


class BudgetOut(BaseModel):
    month: str
    resetsAt: str
    tokens: BudgetLine | None = None
    cost: BudgetLine | None = None


class UsageOut(BaseModel):
    from_: str = Field(alias="from", serialization_alias="from")
    to: str
    groupBy: str
    totals: UsageTotals
    groups: list[UsageGroup]
    budget: BudgetOut | None = Field(
        None, description="This month's budgets, when USER_MONTHLY_*_BUDGET are set"
    )

    model_config = {"populate_by_name": True}


def liked_share(liked: int, disliked: int) -> float | None:
    rated = liked + disliked
    return round(liked / rated, 4) if rated else None


def totals(rows: list[UsageRow]) -> UsageTotals:
    by_status: dict[str, int] = {}
    for row in rows:
        for status, count in row.by_status.items():
            by_status[status] = by_status.get(status, 0) + count
    return UsageTotals(
        jobs=sum(r.jobs for r in rows),
        byStatus=by_status,
        promptTokens=sum(r.prompt_tokens for r in rows),
        completionTokens=sum(r.completion_tokens for r in rows),
        totalTokens=sum(r.total_tokens for r in rows),
        cost=round(sum(r.cost for r in rows), 9),
        pricedJobs=sum(r.priced_jobs for r in rows),
        liked=(liked := sum(r.liked for r in rows)),
        disliked=(disliked := sum(r.disliked for r in rows)),
        likedShare=liked_share(liked, disliked),
    )


def group_out(row: UsageRow) -> UsageGroup:
    return UsageGroup(
        key=row.key,
        jobs=row.jobs,
        byStatus=row.by_status,
        promptTokens=row.prompt_tokens,
        completionTokens=row.completion_tokens,
        totalTokens=row.total_tokens,
        cost=round(row.cost, 9),
        pricedJobs=row.priced_jobs,
        liked=row.liked,
        disliked=row.disliked,
        likedShare=liked_share(row.liked, row.disliked),
    )
