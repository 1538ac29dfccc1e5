"""Request and response bodies of /generate-content (the seed's field names)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.generation.service import QueuedJob
from smartgen.kit.text import without_nul
from smartgen.kit.times import iso_ms
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

    _prompt_without_nul = field_validator("prompt")(without_nul)


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
    attempts: int
    model: str | None = None
    usage: dict[str, Any] | None = None


def queued_response(queued: QueuedJob) -> QueuedResponse:
    delay = queued.delay_seconds
    return QueuedResponse(
        jobId=queued.job.job_id,
        status=queued.job.status,
        delaySeconds=int(delay) if float(delay).is_integer() else delay,
        scheduledFor=iso_ms(queued.job.scheduled_for),
        estimatedCompletionTime=iso_ms(queued.estimated_completion),
    )


def job_out(job: Job) -> JobOut:
    completed = job.status == "completed"
    failed = job.status == "failed"
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
        attempts=job.attempts,
        model=job.model if completed else None,
        usage=job.usage if completed else None,
    )
