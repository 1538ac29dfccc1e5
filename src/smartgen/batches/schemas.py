"""Request and response bodies of /batches."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.generation.schemas import JobOut, _number
from smartgen.kit.times import iso_ms
from smartgen.models import Batch, BatchCounts

WEBHOOK_URL_MAX_CHARS = 2048


def web_url(value: str | None) -> str | None:
    """An `https://host/...` (or `http://`) URL's shape; whether webhooks may call it (the
    SSRF rules, WEBHOOK_ALLOW_HTTP) is `generation.service.checked_webhook_url`'s
    question."""
    if value is None:
        return None
    if len(value) > WEBHOOK_URL_MAX_CHARS or any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError(f"must be an https URL of at most {WEBHOOK_URL_MAX_CHARS} characters")
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError for a port that is not a number or out of range
    except ValueError:
        raise ValueError("must be an https URL") from None
    if (
        parts.scheme not in ("https", "http")
        or not parts.hostname
        or parts.username
        or (parts.password)
    ):
        raise ValueError("must be an https URL such as https://example.com/hooks/smartgen")
    del port
    return value


class BatchRequest(BaseModel):
    """A batch as JSON: its rows, each as POST /generate-content's body."""

    model_config = ConfigDict(extra="forbid")

    rows: list[Any] = Field(
        min_length=1,
        description="Each row as POST /generate-content's body ({prompt, contentType, "
        "…options}); at most BATCH_MAX_ROWS. A row that is not valid is reported in "
        "`rejected` and the others run",
        examples=[[{"prompt": "A bamboo toothbrush", "contentType": "Product Description"}]],
    )
    delaySeconds: float | None = Field(
        None,
        ge=0,
        description="Seconds before the rows may run (default GENERATION_DELAY_SECONDS; a "
        "row's own delaySeconds wins)",
    )
    webhookUrl: str | None = Field(
        None,
        max_length=WEBHOOK_URL_MAX_CHARS,
        pattern=r"^https?://[^\s/?#@]+(?:[/?#]\S*)?$",
        description="Told when the batch ends (`batch.completed`), signed with your default "
        "webhook secret (GET /webhooks/secret); https (plain http only with "
        "WEBHOOK_ALLOW_HTTP), refused when it points at a private address",
    )

    _delay_is_a_number = field_validator("delaySeconds", mode="before")(
        lambda value: _number(value)
    )
    _url = field_validator("webhookUrl")(web_url)


class RejectedRow(BaseModel):
    row: int = Field(description="The row's number in the input (1: the first data row)")
    error: str


class BatchCreated(BaseModel):
    message: str = "Batch accepted"
    batchId: str
    status: str
    total: int = Field(description="Rows in the input")
    accepted: int = Field(description="Rows that became jobs")
    rejected: list[RejectedRow]


class BatchCountsOut(BaseModel):
    waiting: int = Field(description="Queued, waiting their turn (not yet in the queue)")
    queued: int = Field(description="Queued and in the queue")
    processing: int
    completed: int
    failed: int
    cancelled: int


class BatchOut(BaseModel):
    batchId: str
    status: str = Field(description="running, completed or cancelled")
    total: int
    accepted: int
    rejected: int
    counts: BatchCountsOut
    progress: float = Field(description="Finished jobs / accepted rows, 0 to 1")
    costUsd: float = Field(description="What its completed jobs cost so far")
    createdAt: str
    completedAt: str | None = None
    webhookUrl: str | None = None


class BatchPage(BaseModel):
    batches: list[BatchOut]
    nextBefore: str | None = Field(None, description="Pass as `before` for the next page")


class BatchJobsPage(BaseModel):
    jobs: list[JobOut]
    nextAfterRow: int | None = Field(None, description="Pass as `afterRow` for the next page")


class BatchCancelled(BatchOut):
    cancelledJobs: int = Field(description="Jobs this request cancelled")


class BatchRetried(BatchOut):
    requeuedJobs: int = Field(description="Failed jobs queued again (waiting their turn)")


def batch_out(batch: Batch, counts: BatchCounts, payload: dict[str, Any]) -> dict[str, Any]:
    """The fields of `BatchOut` (`payload`: `runner.counts_payload`)."""
    return {
        **payload,
        "status": batch.status,
        "createdAt": iso_ms(batch.created_at),
        "completedAt": iso_ms(batch.completed_at) if batch.completed_at else None,
        "webhookUrl": batch.webhook_url,
    }
