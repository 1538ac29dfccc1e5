"""Request and response bodies of /generate-content (the seed's field names)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.store.base import Job
from smartgen.textcheck import without_nul
from smartgen.times import iso_ms

# PROMPT_MAX_CHARS may be configured up to this; the schema documents the ceiling.
PROMPT_HARD_LIMIT = 20_000

ContentType = Literal["Blog Post Outline", "Product Description", "Social Media Caption"]
Status = Literal["queued", "processing", "completed", "failed"]


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
    status: Status
    delaySeconds: int | float
    scheduledFor: str
    estimatedCompletionTime: str


class JobOut(BaseModel):
    jobId: str
    status: Status
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


def job_out(job: Job) -> JobOut:
    completed = job.status == "completed"
    failed = job.status == "failed"
    return JobOut(
        jobId=job.job_id,
        status=job.status.value,
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
