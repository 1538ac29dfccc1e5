"""Bodies of /webhooks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.kit.outbound import MAX_URL_CHARS
from smartgen.kit.text import without_nul
from smartgen.kit.times import iso_ms
from smartgen.models import WebhookAttempt, WebhookEndpoint

DESCRIPTION_MAX_CHARS = 500
Event = Literal["job.completed", "job.failed", "job.cancelled", "batch.completed"]


def _events(value: list[Event] | None) -> list[Event] | None:
    return None if value is None else sorted(set(value))


def _description(value: str | None) -> str | None:
    return None if value is None else without_nul(value).strip()


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=1,
        max_length=MAX_URL_CHARS,
        description="https URL that receives the events (POST, signed)",
        examples=["https://cms.example.com/hooks/smartgen"],
    )
    events: list[Event] = Field(min_length=1, max_length=4, examples=[["job.completed"]])
    description: str = Field("", max_length=DESCRIPTION_MAX_CHARS, examples=["CMS import"])

    _events = field_validator("events")(_events)
    _description = field_validator("description")(_description)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, min_length=1, max_length=MAX_URL_CHARS)
    events: list[Event] | None = Field(None, min_length=1, max_length=4)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    enabled: bool | None = Field(
        None, description="false pauses deliveries; true resumes them (and forgets failures)"
    )

    _events = field_validator("events")(_events)
    _description = field_validator("description")(_description)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    createdAt: str
    updatedAt: str
    failingSince: str | None = Field(
        None, description="Since when its deliveries fail without a success"
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_…): shown this once")


class SecretOut(BaseModel):
    secret: str = Field(description="Your default signing secret (whsec_…): shown this once")


class DeliveryQueued(BaseModel):
    deliveryId: str
    event: str
    status: str


class AttemptOut(BaseModel):
    id: str
    deliveryId: str
    event: str
    attempt: int
    status: str = Field(description="succeeded (a 2xx) or failed")
    responseCode: int | None
    durationMs: int | None
    responseBody: str | None = Field(description="The first 1 KB of the answer")
    error: str | None = Field(description="Why there was no answer (refused, timeout, …)")
    createdAt: str
    nextAttemptAt: str | None = Field(description="When the delivery is tried again, if it is")


def webhook_out(endpoint: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(
        id=endpoint.webhook_id,
        url=endpoint.url,
        events=endpoint.events,
        description=endpoint.description,
        enabled=endpoint.enabled,
        createdAt=iso_ms(endpoint.created_at),
        updatedAt=iso_ms(endpoint.updated_at),
        failingSince=iso_ms(endpoint.failing_since) if endpoint.failing_since else None,
    )


def webhook_created(endpoint: WebhookEndpoint) -> WebhookCreated:
    return WebhookCreated(**webhook_out(endpoint).model_dump(), secret=endpoint.secret)


def attempt_out(attempt: WebhookAttempt) -> AttemptOut:
    return AttemptOut(
        id=attempt.attempt_id,
        deliveryId=attempt.delivery_id,
        event=attempt.event,
        attempt=attempt.attempt,
        status=attempt.status,
        responseCode=attempt.response_code,
        durationMs=attempt.duration_ms,
        responseBody=attempt.response_body,
        error=attempt.error,
        createdAt=iso_ms(attempt.created_at),
        nextAttemptAt=iso_ms(attempt.next_attempt_at) if attempt.next_attempt_at else None,
    )
