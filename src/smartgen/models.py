"""The domain's plain types, defined once: what a user, a job, a saved content and a
model's answer are. No behaviour beyond a job status's own questions; nothing here
imports the rest of smartgen."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal, get_args

ContentType = Literal["Blog Post Outline", "Product Description", "Social Media Caption"]
CONTENT_TYPES: Final[tuple[ContentType, ...]] = get_args(ContentType)
Tone = Literal["professional", "friendly", "playful", "persuasive", "informative", "bold"]
TONES: Final[tuple[Tone, ...]] = get_args(Tone)
Length = Literal["short", "medium", "long"]
LENGTHS: Final[tuple[Length, ...]] = get_args(Length)
UsageGroup = Literal["day", "contentType", "model"]


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

    # How the caller steered it (the API's names: tone, length, language, audience,
    # keywords, model, temperature, voiceId) plus `voice`, a copy of the brand voice
    # applied, so that deleting the voice never changes the job.
    options: dict[str, Any] | None = None
    parent_job_id: str | None = None  # a variation's original
    # What the provider says the answer cost (its credits/USD); None when it says nothing.
    cost: float | None = None
    # The owner's rating of a completed job ("like" / "dislike"), one per job, changeable.
    feedback_rating: str | None = None
    feedback_comment: str | None = None
    feedback_at: datetime | None = None
    # A batch's job: its batch, its row in the batch's input (1 for the first data row),
    # and whether it still waits its turn (`queued`, but not yet in the queue: the batch
    # lets at most BATCH_CONCURRENCY of its jobs into the queue at once).
    batch_id: str | None = None
    batch_row: int | None = None
    batch_held: bool = False


BatchStatus = Literal["running", "completed", "cancelled"]


# The job's fields, and its times (in `job_to_wire`'s form: ISO 8601 text to the
# millisecond), worked out once: a queue message carries every new job.
_JOB_FIELDS: Final = tuple(one.name for one in fields(Job))
# Read off the annotations (text here: `from __future__ import annotations`), so a time
# field added to `Job` is carried as a time without a second list to keep in step.
_JOB_TIMES: Final = tuple(one.name for one in fields(Job) if "datetime" in str(one.type))


def job_to_wire(job: Job) -> dict[str, Any]:
    """The job as JSON values, every field named, times to the millisecond (as the stores
    keep them): what a queue message carries of a job just stored."""
    wire = {name: getattr(job, name) for name in _JOB_FIELDS}
    for name in _JOB_TIMES:
        value = wire[name]
        if value is not None:
            wire[name] = value.isoformat(timespec="milliseconds")
    wire["status"] = job.status.value
    return wire


def job_from_wire(wire: Any) -> Job | None:
    """The job `job_to_wire` wrote; None for anything else (a field missing, a time or a
    status that does not read)."""
    if not isinstance(wire, dict):
        return None
    try:
        values = {name: wire[name] for name in _JOB_FIELDS}
        for name in _JOB_TIMES:
            value = values[name]
            if value is not None:
                value = values[name] = datetime.fromisoformat(value)
                if value.tzinfo is None:
                    return None
        values["status"] = JobStatus(values["status"])
        return Job(**values)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(slots=True)
class Batch:
    """Many generations submitted together; its rows are ordinary jobs (`Job.batch_id`)."""

    batch_id: str
    user_id: str
    status: BatchStatus
    total: int  # rows in the input
    accepted: int  # rows that became jobs
    rejected: list[dict[str, Any]]  # [{row, error}] for the others
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    webhook_url: str | None = None
    # Whoever fills the batch's free slots holds this until `lock_until` (one at a time).
    lock_owner: str | None = None
    lock_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """A batch's jobs by status; `waiting`: those of the `queued` still waiting their turn."""

    by_status: dict[str, int]
    waiting: int
    cost: float

    @property
    def unfinished(self) -> int:
        return self.by_status.get("queued", 0) + self.by_status.get("processing", 0)

    @property
    def in_queue(self) -> int:
        """Jobs holding one of the batch's slots: let into the queue, not yet final."""
        return self.unfinished - self.waiting

    @property
    def finished(self) -> int:
        return sum(self.by_status.get(s.value, 0) for s in FINAL)


@dataclass(slots=True)
class Voice:
    """A user's brand voice: applied to the jobs that name it (they keep a copy)."""

    voice_id: str
    user_id: str
    name: str
    description: str
    examples: list[str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of `GET /usage`: jobs by status, tokens and cost, as the store sums them."""

    key: str | None
    jobs: int
    by_status: dict[str, int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost: float
    priced_jobs: int  # jobs whose cost is known
    liked: int = 0  # jobs rated "like" by their owner
    disliked: int = 0


def usage_numbers(
    usage: dict[str, Any] | None,
) -> tuple[int | None, int | None, int | None, float | None]:
    """(prompt, completion, total tokens, cost) from a provider's `usage`; None where it
    gave no number."""

    def number(name: str) -> float | None:
        value = (usage or {}).get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value if value >= 0 else None

    def integer(name: str) -> int | None:
        value = number(name)
        return None if value is None else int(value)

    cost = number("cost")
    return (
        integer("prompt_tokens"),
        integer("completion_tokens"),
        integer("total_tokens"),
        None if cost is None else float(cost),
    )


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
    tags: list[str] = field(default_factory=list)
    updated_at: datetime | None = None  # the last edit; `created_at` until there is one

    def __post_init__(self) -> None:
        if self.updated_at is None:
            self.updated_at = self.created_at


Rating = Literal["like", "dislike"]
RATINGS: Final[tuple[Rating, ...]] = get_args(Rating)


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
    # The job's choices; None: the deployment's defaults.
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    # The options as the job holds them (the offline writer reads tone, length, …).
    options: dict[str, Any] | None = None
    # A variation's original text, which the new take must differ from.
    previous: str | None = None


API_KEY_SCOPES: Final = ("generate", "read", "library", "webhooks")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A personal API key as stored: its SHA-256 (hex), never the key itself."""

    key_id: str
    user_id: str
    name: str
    prefix: str
    key_hash: str
    scopes: list[str]
    created_at: datetime
    last_used_at: datetime | None = None
    expires_at: datetime | None = None


WEBHOOK_EVENTS: Final = ("job.completed", "job.failed", "job.cancelled", "batch.completed")


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """A URL a user registered for some events, with its signing secret (`whsec_…`).
    `failing_since`: the first failed delivery of the current run of failures."""

    webhook_id: str
    user_id: str
    url: str
    events: list[str]
    description: str
    secret: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    failing_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One event to one URL (an endpoint's, or a job's own `webhookUrl` when
    `webhook_id` is None); its attempts are `WebhookAttempt`s. `message_id` is the
    `webhook-id` header, the same for every attempt. Status: pending (an attempt is due
    at `next_attempt_at`), succeeded, failed (given up)."""

    delivery_id: str
    user_id: str
    webhook_id: str | None
    url: str
    event: str
    payload: dict[str, Any]
    status: str
    attempts: int
    created_at: datetime
    updated_at: datetime
    message_id: str
    next_attempt_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One try of a delivery: what the receiver answered (the first 1 KB of it), or
    why nothing was sent or received (`error`)."""

    attempt_id: str
    delivery_id: str
    user_id: str
    webhook_id: str | None
    event: str
    attempt: int
    status: str  # succeeded, failed
    created_at: datetime
    response_code: int | None = None
    response_body: str | None = None
    duration_ms: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
