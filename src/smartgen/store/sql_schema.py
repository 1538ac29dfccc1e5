"""The SQL store's schema: tables, column types, and the version that `SqlStore.init()`
brings every database up to (the repositories and the store itself are in `sql.py`).

Schema: `metadata.create_all` plus a one-row `schema_version` table, not Alembic, because
- there is one schema version so far, and `create_all` builds it from nothing and is a no-op
  on a database that has it;
- there is no migration tool to install, configure or remember to run: `init()` (called by the
  API and the worker at start-up) brings any database up to date, the embedded SQLite default
  included;
- future changes are upgrade steps keyed on the version, all in `_upgrade()`, run under a lock
  (a PostgreSQL advisory lock, SQLite `BEGIN IMMEDIATE`) so an API and a worker starting
  together do not race; a database written by a newer smartgen is refused, not guessed at.
Should migrations ever need branching or autogeneration, Alembic can take over from the
recorded version.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import DateTime, TypeDecorator

from smartgen.config import ConfigError
from smartgen.times import as_utc, utcnow

SCHEMA_VERSION = 1


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC in and out, truncated to milliseconds as MongoDB (and `utcnow()`) keep it."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        value = value.replace(microsecond=value.microsecond // 1000 * 1000)
        # SQLite keeps text: naive UTC, so every stored value compares correctly as a string.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


# INTEGER PRIMARY KEY is SQLite's rowid alias (autoincrement); BIGSERIAL on PostgreSQL.
_RowId = BigInteger().with_variant(Integer(), "sqlite")
_Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    Column("updated_at", UtcDateTime, nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("user_id", String, primary_key=True),
    Column("email", String, nullable=False),
    Column("password_hash", String, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ux_users_email", "email", unique=True),
)

jobs = Table(
    "jobs",
    metadata,
    # Insertion order: the tiebreak for equal `created_at` (MongoDB's `_id`).
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("job_id", String, nullable=False),
    Column("user_id", String, nullable=False),
    Column("status", String(16), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("content_type", String, nullable=False),
    Column("scheduled_for", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime),
    Column("completed_at", UtcDateTime),
    Column("failed_at", UtcDateTime),
    Column("generated_content", Text),
    Column("error", Text),
    Column("model", String),
    Column("usage", _Json),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_until", UtcDateTime),
    Column("lease_owner", String),
    Index("ux_jobs_job_id", "job_id", unique=True),
    Index("ix_jobs_user_created", "user_id", "created_at", "id"),
    Index("ix_jobs_user_updated", "user_id", "updated_at"),
    Index("ix_jobs_status_scheduled", "status", "scheduled_for"),
    Index("ix_jobs_user_status", "user_id", "status"),
)

contents = Table(
    "contents",
    metadata,
    Column("id", _RowId, primary_key=True, autoincrement=True),
    Column("content_id", String, nullable=False),
    Column("user_id", String, nullable=False),
    Column("job_id", String, nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("content_type", String, nullable=False),
    Column("prompt", Text),
    Column("model", String),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Index("ux_contents_job_id", "job_id", unique=True),
    Index("ux_contents_content_id", "content_id", unique=True),
    Index("ix_contents_user_created", "user_id", "created_at", "id"),
)


def _upgrade(conn: Connection, from_version: int) -> None:
    """Bring a database written at `from_version` up to `SCHEMA_VERSION`, step by step.

    Runs before `create_all` (which adds whole new tables and their indexes); each step
    alters what already exists. Add `if from_version < N: …` blocks here with each bump.
    """
    del conn, from_version  # version 1 is the first schema: nothing to upgrade yet


def _migrate(conn: Connection) -> None:
    current: int | None = None
    if inspect(conn).has_table(schema_version.name):
        current = conn.execute(select(schema_version.c.version)).scalar()
    if current is not None and current > SCHEMA_VERSION:
        raise ConfigError(
            f"The database schema is version {current}, newer than this smartgen understands "
            f"(version {SCHEMA_VERSION}): upgrade smartgen, or point DATABASE_URL elsewhere"
        )
    if current is not None and current < SCHEMA_VERSION:
        _upgrade(conn, current)
    metadata.create_all(conn)
    if current != SCHEMA_VERSION:
        now = utcnow()
        conn.execute(schema_version.delete())
        conn.execute(schema_version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=now))
