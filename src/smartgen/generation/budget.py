"""Quotes and monthly budgets: what a job is expected to cost before it runs, and the
reservation that keeps a user inside USER_MONTHLY_TOKEN_BUDGET / USER_MONTHLY_COST_BUDGET.

The reservations themselves are a `ports.Budgets` (Redis, atomic across API processes);
this module decides what to reserve, what to say when a job does not fit, and when to
warn (`budget_warning`, once a budget passes 80 %)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from smartgen.config import Settings
from smartgen.errors import PaymentRequired
from smartgen.generation.prompts import estimate_prompt_tokens
from smartgen.kit.times import iso_ms
from smartgen.models import ModelRequest
from smartgen.ports import Budgets, BudgetState, Notifier, Prices

log = logging.getLogger(__name__)

WARN_AT = 0.8  # a budget_warning when a budget passes this share
OFFLINE_PREFIX = "offline/"


@dataclass(frozen=True, slots=True)
class Quote:
    tokens: int  # the prompt's estimate plus the answer's budget (max_tokens)
    cost: float | None  # USD; None when the model's price is unknown


def month_of(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m")


def month_bounds(at: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) holding `at`: [first day, first day of the next)."""
    start = at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def requested_model(settings: Settings, request: ModelRequest) -> str:
    if settings.use_offline_llm:
        return OFFLINE_PREFIX + "smartgen-draft"
    return request.model or settings.openrouter_model


async def quote(settings: Settings, prices: Prices | None, request: ModelRequest) -> Quote:
    prompt_tokens = estimate_prompt_tokens(request.messages)
    answer_tokens = request.max_tokens or settings.llm_max_tokens
    model = requested_model(settings, request)
    if model.startswith(OFFLINE_PREFIX):
        return Quote(prompt_tokens + answer_tokens, 0.0)
    price = await prices.price(model) if prices is not None else None
    cost = None
    if price is not None:
        cost = round(prompt_tokens * price.prompt + answer_tokens * price.completion, 9)
    return Quote(prompt_tokens + answer_tokens, cost)


def budgets_on(settings: Settings) -> bool:
    return settings.user_monthly_token_budget > 0 or settings.user_monthly_cost_budget > 0


async def reserve(
    *,
    settings: Settings,
    budgets: Budgets | None,
    notifier: Notifier,
    user_id: str,
    job_id: str,
    quoted: Quote,
    at: datetime,
) -> bool:
    """Reserve the quote in the user's month; `PaymentRequired` (402 budget_exceeded) when
    it would pass a budget. False when there is nothing to reserve (no budgets)."""
    if budgets is None or not budgets_on(settings):
        return False
    tokens, cost = settings.user_monthly_token_budget, settings.user_monthly_cost_budget
    state = await budgets.reserve(
        user_id=user_id,
        job_id=job_id,
        month=month_of(at),
        tokens=quoted.tokens,
        cost=quoted.cost or 0.0,
        token_limit=tokens,
        cost_limit=cost,
    )
    await _accepted(settings, budgets, notifier, user_id, state, quoted, at)
    return True


async def requote(
    *,
    settings: Settings,
    budgets: Budgets | None,
    notifier: Notifier,
    user_id: str,
    job_id: str,
    quoted: Quote,
    at: datetime,
) -> None:
    """A queued job's new quote (its prompt or content type changed) replaces its
    reservation; `PaymentRequired` when a larger one no longer fits (the old one stays).
    A job that holds no reservation (queued while budgets were off) is left as it is."""
    if budgets is None or not budgets_on(settings):
        return
    state = await budgets.requote(
        job_id,
        tokens=quoted.tokens,
        cost=quoted.cost or 0.0,
        token_limit=settings.user_monthly_token_budget,
        cost_limit=settings.user_monthly_cost_budget,
    )
    if state is not None:
        await _accepted(settings, budgets, notifier, user_id, state, quoted, at)


async def _accepted(
    settings: Settings,
    budgets: Budgets,
    notifier: Notifier,
    user_id: str,
    state: BudgetState,
    quoted: Quote,
    at: datetime,
) -> None:
    """`PaymentRequired` for a refused reservation; else a warning past 80 %, if due."""
    if not state.accepted:
        raise PaymentRequired(refusal(settings, state, quoted, at))
    await warn(settings, budgets, notifier, user_id, state, at)


def refusal(settings: Settings, state: BudgetState, quoted: Quote, at: datetime) -> str:
    _, resets = month_bounds(at)
    parts = []
    token_limit, cost_limit = settings.user_monthly_token_budget, settings.user_monthly_cost_budget
    if token_limit > 0:
        left = max(0, token_limit - state.tokens_used)
        parts.append(
            f"{state.tokens_used} of {token_limit} tokens used this month, {left} left "
            f"(this job needs up to {quoted.tokens})"
        )
    if cost_limit > 0:
        left_cost = max(0.0, cost_limit - state.cost_used)
        need = f" (this job is quoted at ${quoted.cost:.6f})" if quoted.cost else ""
        parts.append(
            f"${state.cost_used:.6f} of ${cost_limit:.6f} used this month, "
            f"${left_cost:.6f} left{need}"
        )
    return "Monthly budget exceeded: " + "; ".join(parts) + f"; it resets at {iso_ms(resets)}"


async def warn(
    settings: Settings,
    budgets: Budgets,
    notifier: Notifier,
    user_id: str,
    state: BudgetState,
    at: datetime,
) -> None:
    """A `budget_warning` when this operation took a budget past 80 %, once per month and
    budget (a reservation given back and taken again does not warn twice). Never raises:
    the operation it follows is done."""
    try:
        await _warn(settings, budgets, notifier, user_id, state, at)
    except Exception as exc:
        log.warning("budget warning for user %s not sent: %s", user_id, type(exc).__name__)


async def _warn(
    settings: Settings,
    budgets: Budgets,
    notifier: Notifier,
    user_id: str,
    state: BudgetState,
    at: datetime,
) -> None:
    _, resets = month_bounds(at)
    checks = [
        ("tokens", settings.user_monthly_token_budget, state.tokens_before, state.tokens_used),
        ("cost", settings.user_monthly_cost_budget, state.cost_before, state.cost_used),
    ]
    for budget, limit, before, after in checks:
        crossed = limit > 0 and before < WARN_AT * limit <= after
        if crossed and await budgets.first_warning(user_id, month_of(at), budget):
            await notifier.user_event(
                user_id,
                "budget_warning",
                {
                    "budget": budget,
                    "limit": limit,
                    "used": after,
                    "percent": round(100 * after / limit, 1),
                    "month": month_of(at),
                    "resetsAt": iso_ms(resets),
                },
            )


async def release(budgets: Budgets | None, job_id: str) -> None:
    """Give a job's reservation back; never raises (a lost release only under-spends)."""
    if budgets is None:
        return
    try:
        await budgets.release(job_id)
    except Exception as exc:
        log.warning("job %s: budget reservation not released: %s", job_id, type(exc).__name__)
