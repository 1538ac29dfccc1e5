"""Request and response bodies of /generate-content (the seed's field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartgen.generation.service import QueuedJob
from smartgen.kit.text import without_nul
from smartgen.kit.times import as_utc, iso_ms
from smartgen.models import ContentType, Job, JobStatus

# PROMPT_MAX_CHARS may be configured up to this; the schema documents the ceiling.
PROMPT_HARD_LIMIT = 20_000


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    prompt: str = Field(
        min_length=1,
        max_length=PROMPT_HARD_LIMIT,
        description="What to write about (trimmed; at most PROMPT_MAX_CHARS characters)",
        examples=["How to bake a sourdough bread"],
    )
    contentType: ContentType = Field(examples=["Blog Post Outline"])
    delaySeconds: float | None = Field(
        None,
        ge=0,
        description="Seconds before the job may run (default GENERATION_DELAY_SECONDS; at "
        "most MAX_DELAY_SECONDS)",
        examples=[300],
    )

    _prompt_without_nul = field_validator("prompt")(without_nul)
    _delay_is_a_number = field_validator("delaySeconds", mode="before")(
        lambda value: _number(value)
    )


def _number(value: Any) -> Any:
    """A JSON number only: `true` is not 1 second."""
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds")
    return value


class JobUpdate(BaseModel):
    """What may change while a job is queued; at least one field."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    delaySeconds: float | None = Field(
        None, ge=0, description="Run this many seconds from now", examples=[600]
    )
    scheduledFor: datetime | None = Field(
        None,
        description="Run at this time (ISO 8601; without a zone, UTC); not with delaySeconds",
        examples=["2026-12-01T09:00:00Z"],
    )
    prompt: str | None = Field(None, min_length=1, max_length=PROMPT_HARD_LIMIT)
    contentType: ContentType | None = None

    _prompt_without_nul = field_validator("prompt")(
        lambda value: None if value is None else without_nul(value)
    )
    _delay_is_a_number = field_validator("delaySeconds", mode="before")(
        lambda value: _number(value)
    )

    @model_validator(mode="after")
    def _something(self) -> JobUpdate:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("give at least one of delaySeconds, scheduledFor, prompt, contentType")
        return self

    @field_validator("scheduledFor")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


class QueuedResponse(BaseModel):
    message: str = "Content generation job queued successfully"
    jobId: str
    status: JobStatus
    delaySeconds: int | float
    scheduledFor: str
    estimatedCompletionTime: str


class JobOut(BaseModel):
    jobId: str
    status: JobStatus
    contentType: str
    prompt: str
    generatedContent: str | None = Field(None, description="Only when completed")
    error: str | None = Field(None, description="Only when failed")
    scheduledFor: str
    createdAt: str
    updatedAt: str
    startedAt: str | None = None
    completedAt: str | None = None
    failedAt: str | None = None
    cancelledAt: str | None = None
    attempts: int
    model: str | None = None
    usage: dict[str, Any] | None = None
    finishReason: str | None = Field(
        None,
        description='Only when completed: why the model stopped, e.g. "stop", or "length" '
        "when the text was cut off at the token limit",
    )
    partialContent: str | None = Field(
        None, description="While processing: the text written so far"
    )
    history: list[dict[str, Any]] | None = Field(
        None, description="Earlier runs of a job queued again (retry), oldest first"
    )


def queued_response(queued: QueuedJob) -> QueuedResponse:
    delay = queued.delay_seconds
    return QueuedResponse(
        jobId=queued.job.job_id,
        status=queued.job.status,
        delaySeconds=int(delay) if float(delay).is_integer() else delay,
        scheduledFor=iso_ms(queued.job.scheduled_for),
        estimatedCompletionTime=iso_ms(queued.estimated_completion),
    )


def job_out(job: Job, *, partial: str | None = None) -> JobOut:
    completed = job.status == "completed"
    failed = job.status == "failed"
    cancelled = job.status == "cancelled"
    return JobOut(
        jobId=job.job_id,
        status=job.status,
        contentType=job.content_type,
        prompt=job.prompt,
        generatedContent=job.generated_content if completed else None,
        error=job.error if failed else None,
        scheduledFor=iso_ms(job.scheduled_for),
        createdAt=iso_ms(job.created_at),
        updatedAt=iso_ms(job.updated_at),
        startedAt=iso_ms(job.started_at) if job.started_at else None,
        completedAt=iso_ms(job.completed_at) if job.completed_at and completed else None,
        failedAt=iso_ms(job.failed_at) if job.failed_at and failed else None,
        cancelledAt=iso_ms(job.cancelled_at) if job.cancelled_at and cancelled else None,
        attempts=job.attempts,
        model=job.model if completed else None,
        usage=job.usage if completed else None,
        finishReason=job.finish_reason if completed else None,
        partialContent=partial if job.status == "processing" else None,
        history=job.history or None,
    )
