"""What the rest of the code may ask of a store: the repository protocols.

Services and tasks talk only to these; `mongo.py` and `sql/` implement them, and
`tests/test_store_contract.py` holds every implementation to them. State transitions are
conditional updates, so a redelivered queue message can never move a finished job
backwards.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from smartgen.models import (
    ApiKey,
    Batch,
    BatchCounts,
    BatchStatus,
    Completion,
    Content,
    Job,
    JobStatus,
    UsageRow,
    User,
    Voice,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)


class UserRepository(Protocol):
    async def create(self, user: User) -> None:
        """Insert; raise `Conflict` when the email is taken."""

    async def get(self, user_id: str) -> User | None: ...

    async def get_by_email(self, email: str) -> User | None: ...

    async def set_password(self, user_id: str, password_hash: str) -> bool:
        """A new password hash; False when the user does not exist."""

    async def delete(self, user_id: str) -> bool:
        """Remove the account (its jobs and contents are the caller's to remove); False when
        it did not exist."""


class JobRepository(Protocol):
    async def create(self, job: Job, *, max_unfinished: int = 0) -> bool:
        """Insert the job and return True, unless `max_unfinished > 0` and the user already
        has at least that many jobs `queued`/`processing` (a batch's jobs waiting their turn
        not counted): then insert nothing and return
        False. The check and the insert are one statement where the store allows it (SQL),
        not a lock: concurrent creations for the same user may overshoot the cap slightly."""

    async def get(self, job_id: str) -> Job | None: ...

    async def get_for_user(self, job_id: str, user_id: str) -> Job | None: ...

    async def list_for_user(
        self, user_id: str, *, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        """Newest first."""

    async def list_changed_since(self, user_id: str, since: datetime, *, limit: int) -> list[Job]:
        """The user's jobs whose `updatedAt` is after `since`, oldest change first."""

    async def count_unfinished(self, user_id: str) -> int:
        """How many of the user's jobs are `queued` or `processing`, not counting a batch's
        jobs that wait their turn (`batch_held`)."""

    async def list_unfinished_due(self, due_before: datetime, *, limit: int) -> list[Job]:
        """Jobs `queued`/`processing` whose `scheduledFor` is before `due_before`, but none
        that waits its turn in a batch (it is not meant to be in the queue yet)."""

    async def list_past_lease(self, at: datetime, *, limit: int) -> list[Job]:
        """Jobs `processing` whose lease ran out before `at` (or that have none): their
        worker died or hangs. Earliest started first."""

    async def mark_processing(
        self,
        job_id: str,
        *,
        at: datetime,
        attempt: int,
        lease_until: datetime | None = None,
        owner: str | None = None,
        due_by: datetime | None = None,
        expected: Job | None = None,
    ) -> Job | None:
        """`queued` → `processing`, or take over a `processing` job whose lease has run
        out, has none, or is held by the same `owner`; None when the job is final, leased
        to another owner, unknown, or (with `due_by`) scheduled after `due_by`. `expected`: the
        queued job as the caller has it (a queue message's copy of it as stored); a store may
        then skip reading the job back when it is still exactly that copy. The answer is
        the same either way."""

    async def release_lease(self, job_id: str, *, owner: str) -> bool:
        """End `owner`'s lease on its `processing` job (the delivery will be retried, here or
        elsewhere): any delivery may take it at once. False when `owner` does not hold it."""

    async def release_leases_of(self, worker: str, *, limit: int) -> list[Job]:
        """End the leases of every `processing` job held by a delivery on `worker` (lease
        owners ending in `@worker`: the worker died); the jobs, as written."""

    async def mark_completed(self, job_id: str, *, result: Completion, at: datetime) -> bool:
        """`processing` → `completed`; False when it was not processing."""

    async def mark_failed(self, job_id: str, *, error: str, at: datetime) -> bool:
        """`queued`/`processing` → `failed`; False when already final."""

    async def delete(self, job_id: str) -> None: ...

    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Job]:
        """The user's jobs oldest first, those after the job `after` (its id): every job
        once, page by page (export, account deletion)."""

    async def delete_for_user(self, user_id: str) -> int:
        """Remove every job of the user; how many there were."""

    async def cancel(self, job_id: str, user_id: str, *, at: datetime) -> Job | None:
        """The owner's `queued`/`processing` job → `cancelled`; the job as written, or None
        when it is final, another user's, or unknown."""

    async def reschedule(
        self,
        job_id: str,
        user_id: str,
        *,
        scheduled_for: datetime,
        at: datetime,
        prompt: str | None = None,
        content_type: str | None = None,
        release: bool = False,
    ) -> Job | None:
        """A new schedule (and prompt, content type) for the owner's `queued` job
        (`release`: a batch's job stops waiting its turn); None when it is not queued,
        another user's, or unknown."""

    async def requeue(
        self,
        job_id: str,
        user_id: str,
        *,
        scheduled_for: datetime,
        at: datetime,
        history: list[dict[str, Any]],
        held: bool = False,
    ) -> Job | None:
        """The owner's `failed`/`cancelled` job → `queued` again, its outcome cleared and
        `history` recorded (`held`: a batch's job, waiting its turn again); None when it is
        in another state, another user's, or unknown."""

    async def restore(self, job: Job) -> bool:
        """Put back this snapshot of a job that is still `queued` (a change the queue
        refused); False when it is no longer queued."""

    async def variation_ids(self, job_id: str, user_id: str, *, limit: int) -> list[str]:
        """The ids of the owner's jobs made as variations of `job_id`, oldest first."""

    async def usage(
        self, user_id: str, *, start: datetime, end: datetime, group_by: str
    ) -> list[UsageRow]:
        """The user's jobs created in [start, end) summed per group (`day` in UTC,
        `contentType`, `model`), by the database itself; ordered by key, None last."""

    async def set_feedback(
        self, job_id: str, user_id: str, *, rating: str, comment: str | None, at: datetime
    ) -> Job | None:
        """The owner's rating of their `completed` job (replacing any earlier one); the job
        as written, or None when it is not completed, another user's, or unknown."""

    async def clear_feedback(self, job_id: str, user_id: str) -> bool:
        """Remove the owner's rating of the job; False when it had none (or is not theirs)."""


class VoiceRepository(Protocol):
    async def create(self, voice: Voice, *, max_per_user: int) -> bool:
        """Insert unless the user already has `max_per_user` voices (then False)."""

    async def get_for_user(self, voice_id: str, user_id: str) -> Voice | None: ...

    async def list_for_user(self, user_id: str, *, limit: int) -> list[Voice]:
        """Newest first."""

    async def update(
        self,
        voice_id: str,
        user_id: str,
        *,
        at: datetime,
        name: str | None = None,
        description: str | None = None,
        examples: list[str] | None = None,
    ) -> Voice | None:
        """Change the given fields of the owner's voice; None when not theirs or unknown."""

    async def delete(self, voice_id: str, user_id: str) -> bool:
        """False when not theirs or unknown."""


class ContentRepository(Protocol):
    async def create_once(self, content: Content) -> tuple[Content, bool]:
        """Insert unless a content for the same job exists; (stored, created)."""

    async def get_for_user(self, content_id: str, user_id: str) -> Content | None: ...

    async def get_for_job(self, job_id: str, user_id: str) -> Content | None:
        """The content saved from this job of this user's, if any."""

    async def list_for_user(self, user_id: str, *, limit: int) -> list[Content]: ...

    async def search(
        self,
        user_id: str,
        *,
        limit: int,
        query: str | None = None,
        content_type: str | None = None,
        tag: str | None = None,
        before: tuple[datetime, str] | None = None,
    ) -> list[Content]:
        """The user's contents newest first (`created_at`, then `content_id`, descending),
        those strictly before the position `before` (a `(created_at, content_id)` pair), of
        this content type, carrying this tag (exact), and, with `query`, containing every
        word of it (`kit.text.search_words`: letters and digits, whole words, any case) in
        the title or the body, found by the database's own full-text index. A query
        without words matches nothing; no query text is ever syntax to the database."""

    async def update(
        self,
        content_id: str,
        user_id: str,
        *,
        at: datetime,
        title: str | None = None,
        body: str | None = None,
        tags: list[str] | None = None,
    ) -> Content | None:
        """Change the given fields of the owner's content (the search index follows);
        None when not theirs or unknown."""

    async def delete(self, content_id: str, user_id: str) -> bool:
        """False when not theirs or unknown."""

    async def page_for_user(self, user_id: str, *, after: str | None, limit: int) -> list[Content]:
        """The user's contents oldest first, those after the content `after` (its id)."""

    async def delete_for_user(self, user_id: str) -> int:
        """Remove every content of the user; how many there were."""


class BatchRepository(Protocol):
    """Batches, and the batch-wide questions about their jobs (which live with the others
    in the jobs' collection/table, with `batch_id`, `batch_row`, `batch_held`)."""

    async def create(self, batch: Batch, jobs: list[Job]) -> None:
        """Insert the batch, then its jobs as given (`queued`, most `batch_held`)."""

    async def get(self, batch_id: str) -> Batch | None: ...

    async def get_for_user(self, batch_id: str, user_id: str) -> Batch | None: ...

    async def list_for_user(self, user_id: str, *, before: str | None, limit: int) -> list[Batch]:
        """Newest first; with `before` (a batch id), those created before that batch (an
        empty list when it is not the user's)."""

    async def list_running(self, *, limit: int) -> list[Batch]:
        """Batches still `running`, oldest first (the periodic pass fills their slots)."""

    async def lock(self, batch_id: str, *, owner: str, until: datetime, at: datetime) -> bool:
        """Take the batch's lock for `owner` until `until`, unless another owner holds it
        past `at`; whether it was taken."""

    async def renew(self, batch_id: str, *, owner: str, until: datetime) -> bool:
        """Keep `owner`'s lock until `until`, only while it is still that owner's: never
        taken over nor given back since (whatever its time); whether it was kept."""

    async def unlock(self, batch_id: str, *, owner: str) -> None:
        """Give the lock back (a no-op when `owner` does not hold it)."""

    async def finish(self, batch_id: str, *, status: BatchStatus, at: datetime) -> Batch | None:
        """`running` → `status` (completed or cancelled); the batch as written, or None when
        it was not running: exactly one caller finishes a batch."""

    async def reopen(self, batch_id: str, *, at: datetime) -> bool:
        """A finished batch → `running` again (its failed jobs queued again)."""

    async def counts(self, batch_id: str) -> BatchCounts:
        """Its jobs by status, those waiting their turn, and the cost of those completed."""

    async def claim_next(self, batch_id: str, *, at: datetime) -> Job | None:
        """The batch's waiting job of the lowest row stops waiting (`batch_held` false), as
        one conditional write: a job is claimed once however many claim at the same time;
        None when none waits (or a concurrent claim took the one this looked at)."""

    async def jobs_page(
        self, batch_id: str, *, after_row: int, limit: int, status: JobStatus | None = None
    ) -> list[Job]:
        """The batch's jobs of rows after `after_row`, in row order (`status`: only those)."""

    async def cancel_waiting(self, batch_id: str, *, at: datetime) -> list[str]:
        """Every job of the batch still waiting its turn → `cancelled`; their ids."""

    async def delete_for_user(self, user_id: str) -> int:
        """Remove every batch of the user (their jobs are `jobs.delete_for_user`'s)."""


class ApiKeyRepository(Protocol):
    async def create(self, key: ApiKey, *, max_per_user: int) -> bool:
        """Insert unless the user already has `max_per_user` keys (then False)."""

    async def get_by_hash(self, key_hash: str) -> ApiKey | None:
        """The key whose SHA-256 (hex) is `key_hash`, expired or not."""

    async def list_for_user(self, user_id: str, *, limit: int) -> list[ApiKey]:
        """Newest first."""

    async def delete(self, key_id: str, user_id: str) -> bool:
        """False when not theirs or unknown."""

    async def touch(self, key_id: str, *, at: datetime) -> None:
        """Record a use of the key (`lastUsedAt`)."""

    async def delete_for_user(self, user_id: str) -> int:
        """Remove every key of the user; how many there were."""


class WebhookRepository(Protocol):
    """Endpoints, the user's default signing secret, deliveries and their attempts."""

    async def create(self, endpoint: WebhookEndpoint, *, max_per_user: int) -> bool:
        """Insert unless the user already has `max_per_user` endpoints (then False)."""

    async def get(self, webhook_id: str) -> WebhookEndpoint | None: ...

    async def get_for_user(self, webhook_id: str, user_id: str) -> WebhookEndpoint | None: ...

    async def list_for_user(self, user_id: str, *, limit: int) -> list[WebhookEndpoint]:
        """Newest first."""

    async def update(
        self,
        webhook_id: str,
        user_id: str,
        *,
        at: datetime,
        url: str | None = None,
        events: list[str] | None = None,
        description: str | None = None,
        enabled: bool | None = None,
    ) -> WebhookEndpoint | None:
        """Change the given fields of the owner's endpoint (enabling it also forgets its
        failures); None when not theirs or unknown."""

    async def delete(self, webhook_id: str, user_id: str) -> bool:
        """False when not theirs or unknown."""

    async def record_outcome(
        self, webhook_id: str, *, ok: bool, at: datetime
    ) -> WebhookEndpoint | None:
        """A delivery succeeded (`failingSince` cleared) or failed (`failingSince` set
        to `at` unless already set); the endpoint as written, None when it is gone."""

    async def disable(self, webhook_id: str, *, at: datetime) -> bool:
        """Enabled → disabled; False when it was not enabled (or is gone)."""

    async def get_secret(self, user_id: str) -> str | None:
        """The user's default signing secret (for jobs' own `webhookUrl`)."""

    async def create_secret(self, user_id: str, secret: str, *, at: datetime) -> bool:
        """Set the user's default secret unless one exists; whether it was set."""

    async def replace_secret(self, user_id: str, secret: str, *, at: datetime) -> None:
        """Set the user's default secret, replacing any."""

    async def create_delivery(self, delivery: WebhookDelivery) -> bool:
        """Insert unless a delivery with the same id exists; whether it was inserted."""

    async def get_delivery(self, delivery_id: str) -> WebhookDelivery | None: ...

    async def get_delivery_for_user(
        self, delivery_id: str, user_id: str
    ) -> WebhookDelivery | None: ...

    async def update_delivery(
        self,
        delivery_id: str,
        *,
        status: str,
        attempts: int,
        at: datetime,
        next_attempt_at: datetime | None,
    ) -> None: ...

    async def list_due_deliveries(self, before: datetime, *, limit: int) -> list[WebhookDelivery]:
        """`pending` deliveries whose next attempt was due before `before`, earliest
        first."""

    async def add_attempt(self, attempt: WebhookAttempt) -> None: ...

    async def list_attempts(
        self, webhook_id: str, user_id: str, *, limit: int
    ) -> list[WebhookAttempt]:
        """The attempts of the owner's endpoint's deliveries, newest first."""

    async def delete_for_user(self, user_id: str) -> int:
        """Remove the user's endpoints, secret, deliveries and attempts; how many
        endpoints there were."""


class Store(Protocol):
    name: str
    users: UserRepository
    jobs: JobRepository
    contents: ContentRepository
    voices: VoiceRepository
    batches: BatchRepository
    api_keys: ApiKeyRepository
    webhooks: WebhookRepository

    async def init(self) -> None:
        """Create indexes / schema (idempotent)."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the database does not answer."""

    async def close(self) -> None: ...
