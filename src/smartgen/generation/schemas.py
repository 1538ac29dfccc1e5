"""Request and response bodies of /generate-content (the seed's field names)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartgen.generation.service import QueuedJob
from smartgen.kit.text import without_nul
from smartgen.kit.times import as_utc, iso_ms
from smartgen.models import ContentType, Job, JobStatus, Length, Rating, Tone

# PROMPT_MAX_CHARS may be configured up to this; the schema documents the ceiling.
PROMPT_HARD_LIMIT = 20_000
AUDIENCE_MAX_CHARS = 200
MAX_KEYWORDS = 10
KEYWORD_MAX_CHARS = 50
# A BCP-47 language tag: language (2-3 letters), optional script, region, variants.
_BCP47 = re.compile(
    r"^(?P<lang>[A-Za-z]{2,3})(?:-(?P<script>[A-Za-z]{4}))?(?:-(?P<region>[A-Za-z]{2}|\d{3}))?"
    r"(?P<rest>(?:-(?:[A-Za-z0-9]{5,8}|\d[A-Za-z0-9]{3}))*)$"
)


def language_tag(value: str) -> str:
    """A BCP-47 tag in its usual case (`pt-BR`, `zh-Hant-TW`); ValueError otherwise."""
    match = _BCP47.match(value) if len(value) <= 35 else None
    if match is None:
        raise ValueError("must be a BCP-47 language tag such as en, de, pt-BR or zh-Hant-TW")
    tag = match["lang"].lower()
    if match["script"]:
        tag += "-" + match["script"].title()
    if match["region"]:
        tag += "-" + match["region"].upper()
    return tag + match["rest"].lower()


class GenerationOptions(BaseModel):
    """How to steer a generation; every field optional."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    tone: Tone | None = Field(None, examples=["friendly"])
    length: Length | None = Field(
        None, description="A word target and token budget per content type", examples=["short"]
    )
    language: str | None = Field(
        None, max_length=35, description="BCP-47 language tag", examples=["pt-BR"]
    )
    audience: str | None = Field(
        None, min_length=1, max_length=AUDIENCE_MAX_CHARS, examples=["busy first-time parents"]
    )
    keywords: list[str] | None = Field(
        None,
        max_length=MAX_KEYWORDS,
        description=f"At most {MAX_KEYWORDS}, each at most {KEYWORD_MAX_CHARS} characters",
        examples=[["sourdough", "starter"]],
    )
    model: str | None = Field(
        None, min_length=1, max_length=200, description="One of ALLOWED_MODELS"
    )
    temperature: float | None = Field(None, ge=0, le=2, examples=[0.7])
    voiceId: str | None = Field(
        None, min_length=1, max_length=64, description="A brand voice of yours"
    )

    _language = field_validator("language")(
        lambda value: None if value is None else language_tag(value)
    )
    _audience = field_validator("audience")(
        lambda value: None if value is None else without_nul(value)
    )
    _audience_sent = field_validator("audience", mode="before")(
        lambda value: _at_most(value, AUDIENCE_MAX_CHARS)
    )
    _temperature_is_a_number = field_validator("temperature", mode="before")(
        lambda value: _number(value, "must be a number from 0 to 2")
    )

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out: list[str] = []
        for keyword in value:
            keyword = without_nul(keyword).strip()
            if not keyword:
                raise ValueError("a keyword must not be blank")
            if len(keyword) > KEYWORD_MAX_CHARS:
                raise ValueError(f"each keyword must be at most {KEYWORD_MAX_CHARS} characters")
            if keyword.lower() not in (k.lower() for k in out):
                out.append(keyword)
        return out

    def options(self) -> dict[str, Any]:
        """The options given, by their API names (nothing for those left out)."""
        chosen = self.model_dump(include=set(GenerationOptions.model_fields))
        return {name: value for name, value in chosen.items() if value is not None}


class GenerationRequest(GenerationOptions):
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

    webhookUrl: str | None = Field(
        None,
        min_length=1,
        max_length=2000,
        description="An https URL told when this job ends (job.completed, job.failed, "
        "job.cancelled), signed with your default webhook secret (GET /webhooks/secret)",
        examples=["https://cms.example.com/hooks/job-done"],
    )

    _prompt_without_nul = field_validator("prompt")(without_nul)
    _delay_is_a_number = field_validator("delaySeconds", mode="before")(
        lambda value: _number(value)
    )


def _at_most(value: Any, limit: int) -> Any:
    """The limit on the text as sent, before trimming (what the schema's maxLength says)."""
    if isinstance(value, str) and len(value) > limit:
        raise ValueError(f"must be at most {limit} characters")
    return value


def _number(value: Any, message: str = "must be a number of seconds") -> Any:
    """A JSON number only: `true` is not 1 second."""
    if isinstance(value, bool):
        raise ValueError(message)
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
    estimatedCost: float | None = Field(
        None,
        description="A quote in USD from the model's price, the prompt's token estimate and "
        "the length budget; null when the model's price is unknown",
    )
    parentJobId: str | None = Field(
        None,
        description="A variation's original (only for variations)",
        exclude_if=lambda v: v is None,
    )


class FeedbackOut(BaseModel):
    rating: Rating
    comment: str | None = Field(None, description="Omitted when none was given")


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
    options: dict[str, Any] | None = Field(
        None,
        description="How the job was steered (tone, length, language, audience, keywords, "
        "model, temperature, voiceId) and `voice`, a copy of the brand voice applied",
    )
    cost: float | None = Field(
        None, description="Once completed: what the provider says it cost (USD credits)"
    )
    parentJobId: str | None = Field(None, description="A variation's original")
    webhookUrl: str | None = Field(None, description="Told when the job ends")
    variationIds: list[str] | None = Field(None, description="Variations of this job")
    feedback: FeedbackOut | None = Field(
        None, description="The owner's rating of the completed job, when there is one"
    )
    batchId: str | None = Field(None, description="The batch this job is a row of")
    batchRow: int | None = Field(None, description="Its row in the batch's input (1: first)")
    batchWaiting: bool | None = Field(
        None,
        description="A batch's queued job still waiting its turn (the batch lets at most "
        "BATCH_CONCURRENCY of its jobs into the queue at once): it runs at scheduledFor "
        "at the earliest",
    )


def queued_response(queued: QueuedJob) -> QueuedResponse:
    delay = queued.delay_seconds
    return QueuedResponse(
        jobId=queued.job.job_id,
        status=queued.job.status,
        delaySeconds=int(delay) if float(delay).is_integer() else delay,
        scheduledFor=iso_ms(queued.job.scheduled_for),
        estimatedCompletionTime=iso_ms(queued.estimated_completion),
        estimatedCost=queued.estimated_cost,
        parentJobId=queued.job.parent_job_id,
    )


def job_out(
    job: Job, *, partial: str | None = None, variation_ids: list[str] | None = None
) -> JobOut:
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
        options={k: v for k, v in job.options.items() if k != "webhookUrl"} or None
        if job.options
        else None,
        cost=job.cost if completed else None,
        parentJobId=job.parent_job_id,
        webhookUrl=(job.options or {}).get("webhookUrl"),
        variationIds=variation_ids or None,
        feedback=(
            FeedbackOut(rating=cast(Rating, job.feedback_rating), comment=job.feedback_comment)
            if job.feedback_rating
            else None
        ),
        batchId=job.batch_id,
        batchRow=job.batch_row,
        batchWaiting=True if job.batch_held and job.status == "queued" else None,
    )
