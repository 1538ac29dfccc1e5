"""A user's rating of a completed job: one per job (the owner's), changeable, removable.
Kept on the job itself, so the job's JSON and GET /usage read it with the job."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from smartgen.errors import Conflict
from smartgen.generation.service import get_job
from smartgen.kit.times import utcnow
from smartgen.models import JobStatus, Rating
from smartgen.store.base import Store


@dataclass(frozen=True, slots=True)
class Feedback:
    job_id: str
    rating: Rating
    comment: str | None
    updated_at: datetime


async def rate_job(
    *, store: Store, user_id: str, job_id: str, rating: Rating, comment: str | None
) -> Feedback:
    """Record (or replace) the owner's rating of their completed job."""
    job = await get_job(store=store, user_id=user_id, job_id=job_id)
    at = utcnow()
    rated = None
    if job.status == JobStatus.completed:
        rated = await store.jobs.set_feedback(
            job.job_id, user_id, rating=rating, comment=comment, at=at
        )
    if rated is None or rated.feedback_at is None:
        raise Conflict(
            f"Only completed jobs can be rated; this job is {job.status.value}",
            code="job_not_completed",
        )
    return Feedback(job.job_id, rating, comment, rated.feedback_at)


async def unrate_job(*, store: Store, user_id: str, job_id: str) -> None:
    """Remove the owner's rating (nothing to remove is fine); 404 for anyone else's job."""
    job = await get_job(store=store, user_id=user_id, job_id=job_id)
    await store.jobs.clear_feedback(job.job_id, user_id)
