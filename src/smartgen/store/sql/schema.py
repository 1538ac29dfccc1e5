"""The SQL schema, and the version every database is brought up to at start-up.

Plain DDL for the two databases, written once with a few type names filled in per dialect,
plus a one-row `schema_version` table. Not Alembic: there is no migration tool to install,
configure or remember to run. `init()` (called by the API and the worker at start-up) runs
`migration()`'s statements under a lock (a PostgreSQL advisory lock, SQLite's
`BEGIN IMMEDIATE`), so an API and a worker starting together do not race, and a database
written by a newer smartgen is refused, not guessed at. A schema change is a new entry in
`UPGRADES` and a bump of `SCHEMA_VERSION`.

Version 1 is the schema smartgen 0.1 created through SQLAlchemy's `create_all` (the same
tables, columns, types and index names), so databases it wrote are brought up to date like
any other (`tests/test_store_contract.py` opens one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

from smartgen.config import ConfigError

Dialect = Literal["postgresql", "sqlite"]

SCHEMA_VERSION: Final = 7
# pg_advisory_xact_lock key for schema changes ("smartgen" in ASCII).
SCHEMA_LOCK: Final = 0x736D61727467656E

_TYPES: Final[dict[Dialect, dict[str, str]]] = {
    # SQLite keeps datetimes as naive UTC text (`2026-01-11 19:34:18.356000`), which
    # compares correctly as a string; INTEGER PRIMARY KEY is its rowid alias.
    "sqlite": {
        "rowid": "INTEGER",
        "ts": "DATETIME",
        "json": "JSON",
        "float": "REAL",
        "bool": "BOOLEAN",
    },
    "postgresql": {
        "rowid": "BIGSERIAL",
        "ts": "TIMESTAMP WITH TIME ZONE",
        "json": "JSONB",
        "float": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
    },
}

_TABLES: Final = [
    """CREATE TABLE IF NOT EXISTS schema_version (
        id INTEGER NOT NULL,
        version INTEGER NOT NULL,
        updated_at {ts},
        PRIMARY KEY (id))""",
    """CREATE TABLE IF NOT EXISTS users (
        user_id VARCHAR NOT NULL,
        email VARCHAR NOT NULL,
        password_hash VARCHAR NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        PRIMARY KEY (user_id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_users_email ON users (email)",
    # `id` is the insertion order: the tiebreak for equal `created_at` (MongoDB's `_id`).
    """CREATE TABLE IF NOT EXISTS jobs (
        id {rowid} NOT NULL,
        job_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        status VARCHAR(16) NOT NULL,
        prompt TEXT NOT NULL,
        content_type VARCHAR NOT NULL,
        scheduled_for {ts} NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        started_at {ts},
        completed_at {ts},
        failed_at {ts},
        generated_content TEXT,
        error TEXT,
        model VARCHAR,
        usage {json},
        attempts INTEGER NOT NULL,
        lease_until {ts},
        lease_owner VARCHAR,
        cancelled_at {ts},
        history {json},
        finish_reason VARCHAR(32),
        options {json},
        parent_job_id VARCHAR,
        cost {float},
        prompt_tokens INTEGER,
        completion_tokens INTEGER,
        total_tokens INTEGER,
        feedback_rating VARCHAR(8),
        feedback_comment TEXT,
        feedback_at {ts},
        batch_id VARCHAR,
        batch_row INTEGER,
        batch_held INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_jobs_job_id ON jobs (job_id)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_user_created ON jobs (user_id, created_at, id)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_user_updated ON jobs (user_id, updated_at)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_status_scheduled ON jobs (status, scheduled_for)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_user_status ON jobs (user_id, status)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_parent ON jobs (parent_job_id)",
    "CREATE INDEX IF NOT EXISTS ix_jobs_batch_row ON jobs (batch_id, batch_row)",
    """CREATE TABLE IF NOT EXISTS batches (
        id {rowid} NOT NULL,
        batch_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        status VARCHAR(16) NOT NULL,
        total INTEGER NOT NULL,
        accepted INTEGER NOT NULL,
        rejected {json} NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        completed_at {ts},
        webhook_url TEXT,
        lock_owner VARCHAR,
        lock_until {ts},
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_batches_batch_id ON batches (batch_id)",
    "CREATE INDEX IF NOT EXISTS ix_batches_user_created ON batches (user_id, created_at, id)",
    "CREATE INDEX IF NOT EXISTS ix_batches_status ON batches (status, created_at)",
    """CREATE TABLE IF NOT EXISTS contents (
        id {rowid} NOT NULL,
        content_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        job_id VARCHAR NOT NULL,
        title TEXT NOT NULL,
        body TEXT NOT NULL,
        content_type VARCHAR NOT NULL,
        prompt TEXT,
        model VARCHAR,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        tags {json} NOT NULL DEFAULT '[]',
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_contents_job_id ON contents (job_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_contents_content_id ON contents (content_id)",
    "CREATE INDEX IF NOT EXISTS ix_contents_user_created ON contents (user_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS voices (
        id {rowid} NOT NULL,
        voice_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        examples {json} NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_voices_voice_id ON voices (voice_id)",
    "CREATE INDEX IF NOT EXISTS ix_voices_user_created ON voices (user_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS api_keys (
        id {rowid} NOT NULL,
        key_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        name TEXT NOT NULL,
        prefix VARCHAR NOT NULL,
        key_hash VARCHAR NOT NULL,
        scopes {json} NOT NULL,
        created_at {ts} NOT NULL,
        last_used_at {ts},
        expires_at {ts},
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_api_keys_key_id ON api_keys (key_id)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_api_keys_hash ON api_keys (key_hash)",
    "CREATE INDEX IF NOT EXISTS ix_api_keys_user_created ON api_keys (user_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS webhooks (
        id {rowid} NOT NULL,
        webhook_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        url TEXT NOT NULL,
        events {json} NOT NULL,
        description TEXT NOT NULL,
        secret VARCHAR NOT NULL,
        enabled {bool} NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        failing_since {ts},
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_webhooks_webhook_id ON webhooks (webhook_id)",
    "CREATE INDEX IF NOT EXISTS ix_webhooks_user_created ON webhooks (user_id, created_at, id)",
    """CREATE TABLE IF NOT EXISTS webhook_secrets (
        user_id VARCHAR NOT NULL,
        secret VARCHAR NOT NULL,
        created_at {ts} NOT NULL,
        PRIMARY KEY (user_id))""",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        id {rowid} NOT NULL,
        delivery_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        webhook_id VARCHAR,
        url TEXT NOT NULL,
        event VARCHAR NOT NULL,
        payload {json} NOT NULL,
        status VARCHAR(16) NOT NULL,
        attempts INTEGER NOT NULL,
        created_at {ts} NOT NULL,
        updated_at {ts} NOT NULL,
        message_id VARCHAR NOT NULL,
        next_attempt_at {ts},
        PRIMARY KEY (id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux_webhook_deliveries_id "
    "ON webhook_deliveries (delivery_id)",
    "CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_due "
    "ON webhook_deliveries (status, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS ix_webhook_deliveries_user ON webhook_deliveries (user_id)",
    """CREATE TABLE IF NOT EXISTS webhook_attempts (
        id {rowid} NOT NULL,
        attempt_id VARCHAR NOT NULL,
        delivery_id VARCHAR NOT NULL,
        user_id VARCHAR NOT NULL,
        webhook_id VARCHAR,
        event VARCHAR NOT NULL,
        attempt INTEGER NOT NULL,
        status VARCHAR(16) NOT NULL,
        created_at {ts} NOT NULL,
        response_code INTEGER,
        response_body TEXT,
        duration_ms INTEGER,
        error TEXT,
        next_attempt_at {ts},
        PRIMARY KEY (id))""",
    "CREATE INDEX IF NOT EXISTS ix_webhook_attempts_hook "
    "ON webhook_attempts (webhook_id, created_at, id)",
    "CREATE INDEX IF NOT EXISTS ix_webhook_attempts_user ON webhook_attempts (user_id)",
]


def _v2(dialect: Dialect) -> list[str]:
    """Job control: cancelled jobs, and the history of a job queued again."""
    types = _TYPES[dialect]
    return [
        f"ALTER TABLE jobs ADD COLUMN cancelled_at {types['ts']}",
        f"ALTER TABLE jobs ADD COLUMN history {types['json']}",
    ]


def _v3(dialect: Dialect) -> list[str]:
    """Why the model stopped (`finishReason`: "length" when the text was cut off)."""
    return ["ALTER TABLE jobs ADD COLUMN finish_reason VARCHAR(32)"]


def _v4(dialect: Dialect) -> list[str]:
    """Steering and paying (issue 15): a job's options, a variation's original, its cost
    and token counts (columns, so that GET /usage sums them in SQL). The voices table and
    the parent index come with the CREATE statements."""
    types = _TYPES[dialect]
    return [
        f"ALTER TABLE jobs ADD COLUMN options {types['json']}",
        "ALTER TABLE jobs ADD COLUMN parent_job_id VARCHAR",
        f"ALTER TABLE jobs ADD COLUMN cost {types['float']}",
        "ALTER TABLE jobs ADD COLUMN prompt_tokens INTEGER",
        "ALTER TABLE jobs ADD COLUMN completion_tokens INTEGER",
        "ALTER TABLE jobs ADD COLUMN total_tokens INTEGER",
    ]


# The content library's full-text search, done by each database (issue 16).
# SQLite: an FTS5 external-content table over contents' title and body (rowid = contents.id),
# kept in step by triggers, so every write path (save, edit, delete, account deletion)
# updates it in the same transaction. unicode61 folds case and diacritics.
_SQLITE_SEARCH: Final = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS contents_fts USING fts5("
    "title, body, content='contents', content_rowid='id', tokenize='unicode61')",
    "CREATE TRIGGER IF NOT EXISTS contents_fts_insert AFTER INSERT ON contents BEGIN "
    "INSERT INTO contents_fts (rowid, title, body) VALUES (new.id, new.title, new.body); END",
    "CREATE TRIGGER IF NOT EXISTS contents_fts_delete AFTER DELETE ON contents BEGIN "
    "INSERT INTO contents_fts (contents_fts, rowid, title, body) "
    "VALUES ('delete', old.id, old.title, old.body); END",
    "CREATE TRIGGER IF NOT EXISTS contents_fts_update AFTER UPDATE OF title, body ON contents "
    "BEGIN INSERT INTO contents_fts (contents_fts, rowid, title, body) "
    "VALUES ('delete', old.id, old.title, old.body); "
    "INSERT INTO contents_fts (rowid, title, body) VALUES (new.id, new.title, new.body); END",
]
# PostgreSQL: a generated tsvector ('simple': lower-cased words, no stemming, as the other
# two stores match) and a GIN index on it; the tags' GIN index serves `tag=`.
_POSTGRES_SEARCH: Final = [
    "ALTER TABLE contents ADD COLUMN IF NOT EXISTS search tsvector GENERATED ALWAYS AS "
    "(to_tsvector('simple', title || ' ' || body)) STORED",
    "CREATE INDEX IF NOT EXISTS ix_contents_search ON contents USING GIN (search)",
    "CREATE INDEX IF NOT EXISTS ix_contents_tags ON contents USING GIN (tags)",
]
_SEARCH: Final[dict[Dialect, list[str]]] = {
    "sqlite": _SQLITE_SEARCH,
    "postgresql": _POSTGRES_SEARCH,
}


def _v5(dialect: Dialect) -> list[str]:
    """The content library (issue 16): tags on contents (existing ones get none), the
    owner's rating of a job (columns on jobs: the job's JSON and GET /usage read it with
    the job, in the same row and the same statement), and the search index, filled from
    the contents already there."""
    types = _TYPES[dialect]
    steps = [
        f"ALTER TABLE contents ADD COLUMN tags {types['json']} NOT NULL DEFAULT '[]'",
        "ALTER TABLE jobs ADD COLUMN feedback_rating VARCHAR(8)",
        "ALTER TABLE jobs ADD COLUMN feedback_comment TEXT",
        f"ALTER TABLE jobs ADD COLUMN feedback_at {types['ts']}",
    ]
    if dialect == "sqlite":
        # The table and its triggers now, then the rows written before them.
        steps += _SQLITE_SEARCH
        steps.append("INSERT INTO contents_fts (contents_fts) VALUES ('rebuild')")
    # PostgreSQL computes the generated column for existing rows when it is added (with
    # the CREATE statements below).
    return steps


def _v6(dialect: Dialect) -> list[str]:
    """Integrations (issue 17): personal API keys, webhooks. New tables only: they come
    with the CREATE statements."""
    return []


def _v7(dialect: Dialect) -> list[str]:
    """Server-side batches (issue 17): a job's batch, its row, and whether it still waits
    its turn. The batches table and the indexes come with the CREATE statements."""
    return [
        "ALTER TABLE jobs ADD COLUMN batch_id VARCHAR",
        "ALTER TABLE jobs ADD COLUMN batch_row INTEGER",
        "ALTER TABLE jobs ADD COLUMN batch_held INTEGER NOT NULL DEFAULT 0",
    ]


# Upgrade steps: UPGRADES[n] brings a database at version n - 1 to version n. They run
# before the CREATE statements above (which add whole new tables and their indexes).
UPGRADES: Final[dict[int, Callable[[Dialect], list[str]]]] = {
    2: _v2,
    3: _v3,
    4: _v4,
    5: _v5,
    6: _v6,
    7: _v7,
}

# Whether schema_version exists, per dialect (one row with one column, or none).
VERSION_TABLE_EXISTS: Final[dict[Dialect, str]] = {
    "sqlite": "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
    "postgresql": "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() "
    "AND tablename = 'schema_version'",
}
CURRENT_VERSION: Final = "SELECT version FROM schema_version WHERE id = 1"
_NOW: Final[dict[Dialect, str]] = {
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
    "postgresql": "now()",
}


def create_statements(dialect: Dialect) -> list[str]:
    return [statement.format(**_TYPES[dialect]) for statement in _TABLES] + _SEARCH[dialect]


def migration(dialect: Dialect, current: int | None) -> list[str]:
    """The statements that bring a database at version `current` (None: a new database)
    to `SCHEMA_VERSION`, in order; `ConfigError` for a database newer than this code."""
    if current is not None and current > SCHEMA_VERSION:
        raise ConfigError(
            f"The database schema is version {current}, newer than this smartgen understands "
            f"(version {SCHEMA_VERSION}): upgrade smartgen, or point DATABASE_URL elsewhere"
        )
    statements: list[str] = []
    if current is not None:
        for version in range(current + 1, SCHEMA_VERSION + 1):
            statements += UPGRADES[version](dialect)
    statements += create_statements(dialect)
    if current != SCHEMA_VERSION:
        statements += [
            "DELETE FROM schema_version",
            "INSERT INTO schema_version (id, version, updated_at) "
            f"VALUES (1, {SCHEMA_VERSION}, {_NOW[dialect]})",
        ]
    return statements
