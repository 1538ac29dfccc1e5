"""The domain's plain types, defined once: what a user, a job, a saved content and a
model's answer are. No behaviour beyond a job status's own questions; nothing here
imports the rest of smartgen."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal, get_args

ContentType = Literal["Blog Post Outline", "Product Description", "Social Media Caption"]
CONTENT_TYPES: Final[tuple[ContentType, ...]] = get_args(ContentType)


class JobStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL


UNFINISHED: Final = (JobStatus.queued, JobStatus.processing)
FINAL: Final = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})
# A job that ended without content may be queued again (`retry`).
RETRYABLE: Final = (JobStatus.failed, JobStatus.cancelled)


@dataclass(slots=True)
class User:
    user_id: str
    email: str
    password_hash: str
    created_at: datetime


@dataclass(slots=True)
class Job:
    job_id: str
    user_id: str
    status: JobStatus
    prompt: str
    content_type: str
    scheduled_for: datetime
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None
    failed_at: datetime | None = None
    generated_content: str | None = None
    error: str | None = None
    model: str | None = None
    usage: dict[str, Any] | None = None
    attempts: int = 0
    # While a delivery generates, no other queue message for the same job may take it
    # over; retries of the same message (same owner) may.
    lease_until: datetime | None = None
    lease_owner: str | None = None
    cancelled_at: datetime | None = None
    # Earlier runs of a job queued again (`retry`), oldest first: what each ended with.
    history: list[dict[str, Any]] | None = None
    # Why the model stopped ("stop", "length": cut off at the token limit, …), if it said.
    finish_reason: str | None = None


@dataclass(slots=True)
class Content:
    content_id: str
    user_id: str
    job_id: str
    title: str
    body: str
    content_type: str
    created_at: datetime
    prompt: str | None = None
    model: str | None = None


@dataclass(slots=True)
class Completion:
    """A model's answer: what the worker writes when a job completes."""

    content: str
    model: str
    usage: dict[str, Any] | None = field(default=None)
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One generation as a model receives it: the chat messages, and what they were built
    from (a writer that needs no model, such as the offline one, reads these)."""

    content_type: str
    prompt: str
    messages: list[dict[str, str]]
