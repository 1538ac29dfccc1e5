"""Settings: the seed's variable names, our additions, read from the environment and `.env`."""

from __future__ import annotations

import ipaddress
import json
from functools import cached_property
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
DEFAULT_MODEL = "openai/gpt-4o-mini"
MIN_SECRET_LENGTH = 32


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it in one line."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- the seed's names -------------------------------------------------------------
    mongo_uri: str | None = None
    redis_endpoint: str | None = None
    redis_port: int | None = None
    redis_user: str | None = None
    redis_password: str | None = None
    openrouter_key: str | None = None
    base_url: str = OPENROUTER_BASE_URL

    # --- ours ---------------------------------------------------------------------------
    # Redis: REDIS_URL wins over the parts; rediss:// turns TLS on.
    redis_url: str | None = None
    redis_tls: bool = False
    # Redis Sentinel: "host:port,host:port,…"; when set, every client asks these for the
    # address of REDIS_SENTINEL_MASTER (credentials, database and TLS still come from
    # REDIS_URL / the parts) and follows a failover by itself.
    redis_sentinels: str | None = None
    redis_sentinel_master: str = "mymaster"
    redis_sentinel_user: str | None = None  # the sentinels' own ACL user and password
    redis_sentinel_password: str | None = None
    # Every asyncio Redis connection packs its commands with hiredis's C packer
    # (redis_clients.py); false: redis-py's own packer, in Python.
    redis_hiredis_packing: bool = True
    # A Redis command takes and returns its pooled connection without redis-py's unused
    # per-call bookkeeping (redis_clients.py); false: redis-py's own.
    redis_lean_calls: bool = True
    # POST /generate-content served without FastAPI's per-request layers (api/direct.py);
    # false: FastAPI serves it as every other route.
    api_direct_routes: bool = True
    # `smartgen dev` with no Redis configured: "auto" uses 127.0.0.1:6379 when it answers,
    # else starts a private redis-server; "private" always starts the private one.
    embedded_redis: Literal["auto", "private"] = "auto"
    mongo_db: str | None = None
    # PyMongo's asyncio sends and reads in the caller's task, one timer per step instead
    # of three tasks (store/mongo_io.py); false: PyMongo's own.
    mongo_lean_io: bool = True
    # SQL store: postgresql://… or sqlite:///path; with neither MONGO_URI nor this, an
    # embedded SQLite file in DATA_DIR is used.
    database_url: str | None = None
    # Connections each process keeps to PostgreSQL; the sum over API and worker processes
    # must stay under the server's max_connections (100 by default).
    db_pool_size: int = Field(15, ge=1, le=500)
    # First come, first served connections (store/sql/fair_pool.py); false: asyncpg's pool
    # and asyncio semaphores.
    db_fair_pool: bool = True
    data_dir: str = ".smartgen"

    host: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    # API processes on PORT; above 1, a dispatcher keeps each Socket.IO session on the
    # process that holds it (sticky.py). One process is one core.
    api_workers: int = Field(1, ge=1, le=64)
    # Slow and greedy HTTP clients (server/http_guard.py): the request line and headers at
    # most this many bytes (431 past it) and complete within this many seconds of the
    # connection or of the request's first byte; a body complete within this many seconds
    # of its head (408 else); an idle kept-alive connection closed after this many
    # seconds; at most this many connections and requests at once per API process
    # (uvicorn's limit_concurrency: 503 past it).
    http_max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    http_header_timeout_seconds: float = Field(10.0, gt=0)
    http_body_timeout_seconds: float = Field(30.0, gt=0)
    http_keepalive_timeout_seconds: int = Field(5, ge=1)
    http_max_connections: int = Field(2000, ge=1)
    # Above the largest valid body (a 20,000-character prompt, JSON-escaped).
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    # Rate limits (Redis-backed, across API processes); 0 turns one off.
    generate_rate_limit: int = Field(60, ge=0)
    max_unfinished_jobs: int = Field(100, ge=0)  # per user: queued + processing
    generate_rate_window_seconds: float = Field(60.0, gt=0)
    # Failed logins per (email, client address) per window; past it that address is
    # refused for that email (the owner's other addresses are not affected).
    login_rate_limit: int = Field(10, ge=0)
    login_ip_rate_limit: int = Field(100, ge=0)  # per client address
    login_rate_window_seconds: float = Field(300.0, gt=0)
    register_ip_rate_limit: int = Field(30, ge=0)
    register_rate_window_seconds: float = Field(3600.0, gt=0)
    # Failed logins per email from all addresses; past it, only addresses that logged in
    # to the account before are heard (LOGIN_KNOWN_ADDRESS_DAYS).
    login_email_failure_limit: int = Field(100, ge=0)
    login_known_address_days: float = Field(30.0, gt=0)
    # Per client address, all users together (0: off); the per-user limit stays.
    generate_ip_rate_limit: int = Field(600, ge=0)
    # Saves (POST /generate-content/{jobId}/save) per user per window.
    save_rate_limit: int = Field(60, ge=0)
    save_rate_window_seconds: float = Field(60.0, gt=0)
    # Password hashes computed at once per API process (argon2: ~50 ms of a core and
    # 64 MiB each); 0: the number of cores. Past it, 503 with Retry-After at once.
    password_hash_concurrency: int = Field(0, ge=0, le=256)
    # Peers whose X-Forwarded-For is believed (addresses or CIDRs, comma-separated); by
    # default none: the client address is the TCP peer's.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # How long a process trusts that a token's user exists (a deleted account's tokens
    # are refused at once in the process that deleted it, within this elsewhere).
    user_check_cache_seconds: float = Field(5.0, ge=0, le=300)
    # Revocations (logout, password change, account deletion) reach every API process at
    # once over Redis pub/sub; each also reloads them this often in case a message was lost.
    revocation_refresh_seconds: float = Field(30.0, gt=0)
    # NoDecode: the environment's value reaches `_split_origins` as text ("a,b" or JSON).
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "info"
    # text: human-readable lines; json: one JSON object per line, with requestId, userId
    # and jobId where known.
    log_format: Literal["text", "json"] = "text"
    # GET /metrics (Prometheus): on unless false; behind `Authorization: Bearer
    # METRICS_TOKEN` when that is set. The worker serves its own on METRICS_PORT (none
    # unless set), on HOST.
    metrics_enabled: bool = True
    metrics_token: str | None = None
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Queue depth is read from Redis at most once per this many seconds per process.
    metrics_queue_cache_seconds: float = Field(5.0, ge=0)
    # FastAPI's native OpenTelemetry (request spans, metrics, error logs) to the globally
    # configured OTel providers. Off by default: while on, every request asks the
    # providers whether anyone listens, even when no one was configured.
    otel_enabled: bool = False
    # One pub/sub message per batch of events, rooms without a client here skipped
    # (realtime/batched_relay.py); false: python-socketio's per-event relay.
    realtime_batched_relay: bool = True

    jwt_secret: str | None = None
    jwt_expires_minutes: int = Field(60 * 24, ge=1)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # The web console's sessions (README: Design, "The console's session"): access tokens
    # of this lifetime kept in the page's memory, renewed with a rotating refresh token in
    # an HttpOnly cookie that lives this many days from its last use.
    console_token_minutes: int = Field(15, ge=1, le=24 * 60)
    refresh_token_days: float = Field(14.0, gt=0, le=365)
    # Development only: accept a short/weak JWT_SECRET.
    allow_insecure_secret: bool = False

    generation_delay_seconds: float = Field(60.0, ge=0, le=7 * 24 * 3600)
    # The longest delay a job may be given (POST delaySeconds, PATCH delaySeconds or
    # scheduledFor).
    max_delay_seconds: float = Field(7 * 24 * 3600.0, gt=0, le=365 * 24 * 3600)
    # Idempotency-Key: how long a key replays its first answer.
    idempotency_ttl_seconds: float = Field(24 * 3600.0, gt=0)
    # Live text: at most one job_progress event per job per this interval.
    progress_interval_seconds: float = Field(0.1, ge=0.01, le=10)
    # The per-user event log (Redis streams): replay for sync and GET /events.
    event_log_max_events: int = Field(1000, ge=10)
    event_log_max_age_seconds: float = Field(24 * 3600.0, gt=0)
    # Socket.IO floods: an Engine.IO session must send its Socket.IO CONNECT within this
    # many seconds (else it is closed); at most this many sockets per user across API
    # processes (0: no cap); `sync` at most this many times per user per window (0: off).
    socketio_connect_timeout_seconds: float = Field(5.0, gt=0)
    socketio_max_sockets_per_user: int = Field(20, ge=0)
    socketio_sync_rate_limit: int = Field(30, ge=0)
    socketio_sync_rate_window_seconds: float = Field(60.0, gt=0)
    # New Engine.IO sessions (handshakes) per client address; 0 is off.
    socketio_ip_session_rate_limit: int = Field(300, ge=0)
    socketio_ip_session_rate_window_seconds: float = Field(60.0, gt=0)
    # What each open websocket keeps, smaller (server/compact_websocket.py for uvicorn's
    # protocol, realtime/engineio_asgi.py for Engine.IO's request and queue); false: the
    # libraries' stock objects.
    socketio_compact_connections: bool = True
    # GET /events: a comment line this often keeps proxies from closing an idle stream.
    events_heartbeat_seconds: float = Field(15.0, gt=0)
    expected_processing_seconds: float = Field(30.0, ge=0)
    prompt_max_chars: int = Field(4000, ge=1, le=20_000)
    jobs_list_default_limit: int = Field(50, ge=1)
    jobs_list_max_limit: int = Field(200, ge=1)
    # Batches (POST /batches): rows per batch; jobs of one batch in the queue at once
    # (the rest wait their turn); the largest file or JSON body a batch may be sent as;
    # batches created per user per GENERATE_RATE_WINDOW_SECONDS (0: off).
    batch_max_rows: int = Field(1000, ge=1, le=100_000)
    batch_concurrency: int = Field(4, ge=1, le=1000)
    batch_max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    batch_rate_limit: int = Field(10, ge=0)

    queue_name: str = "content-generation"
    queue_prefix: str = "bull"
    queue_timeout_seconds: float = Field(5.0, gt=0)
    job_attempts: int = Field(3, ge=1, le=20)
    job_backoff_ms: int = Field(5000, ge=0)
    job_backoff_max_ms: int = Field(5 * 60 * 1000, ge=0)
    keep_completed_jobs: int = Field(1000, ge=0)
    keep_failed_jobs: int = Field(5000, ge=0)

    worker_concurrency: int = Field(50, ge=1, le=10_000)
    # Complete a job and take the next one in one script call (queue/fetch_next.py);
    # false: bullmq's stock Worker.
    worker_fetch_next: bool = True
    # Each worker beats this often (0: off, and a dead worker's jobs wait for bullmq's
    # lock and stalled check); one silent for WORKER_DEAD_AFTER_SECONDS is dead and its
    # jobs are queued again at once (queue/liveness.py).
    worker_heartbeat_seconds: float = Field(1.0, ge=0, le=60)
    worker_dead_after_seconds: float = Field(4.0, gt=0, le=600)
    lock_duration_ms: int = Field(30_000, ge=1000)
    stalled_interval_ms: int = Field(30_000, ge=1000)
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    store_write_retry_seconds: float = Field(30.0, ge=0)
    # How long one delivery owns a `processing` job; default: the LLM timeout + 15 s.
    processing_lease_seconds: float | None = Field(None, gt=0)
    reconcile_interval_seconds: float = Field(60.0, gt=0)
    reconcile_grace_seconds: float = Field(30.0, ge=0)
    reconcile_max_age_seconds: float = Field(24 * 3600.0, gt=0)
    reconcile_batch: int = Field(500, ge=1)

    # auto: OpenRouter/BASE_URL when a key is set or BASE_URL is local, else offline drafts
    llm_provider: Literal["auto", "openai", "offline"] = "auto"
    openrouter_model: str = DEFAULT_MODEL
    openrouter_referer: str | None = None
    openrouter_title: str | None = "smartgen"
    llm_timeout_seconds: float = Field(60.0, gt=0)
    llm_proxy: str | None = None  # e.g. http://proxy.internal:3128 for the model provider
    llm_max_tokens: int = Field(1200, ge=1)
    # The most bytes read of one answer from the model provider (a JSON body, or a whole
    # stream with its comments); more is a clear failure, not retried. Compressed answers
    # are refused outright (a small gzip body can unpack to gigabytes).
    llm_max_response_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # A streamed answer ends within this many seconds, whatever the provider keeps sending
    # (SSE comments included); default: the processing lease less 5 s.
    llm_stream_max_seconds: float | None = Field(None, gt=0)
    # A provider's Retry-After is honoured up to this many seconds (and never beyond the
    # processing lease), so a job is not parked for as long as the provider asks.
    llm_retry_after_max_seconds: float = Field(30.0, ge=0)
    llm_temperature: float = Field(0.7, ge=0, le=2)
    # The models a job may ask for by name ("a,b" or JSON); empty: OPENROUTER_MODEL only.
    allowed_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Sent as OpenRouter's `models` routing list after the job's model: tried in order when
    # it is down, rate limited or refuses; the job records the model that answered.
    openrouter_fallback_models: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Prices that win over OpenRouter's GET /models, in USD per token as OpenRouter gives
    # them: {"model": {"prompt": 0.00000015, "completion": 0.0000006}} (JSON).
    model_prices: Annotated[dict[str, dict[str, float]], NoDecode] = Field(default_factory=dict)
    # How long the API keeps OpenRouter's price list before asking again.
    model_prices_cache_seconds: float = Field(3600.0, gt=0)
    # Per user and calendar month (UTC); 0: no budget. Each queued job reserves its quote.
    user_monthly_token_budget: int = Field(0, ge=0)
    user_monthly_cost_budget: float = Field(0.0, ge=0)
    # Brand voices one user may keep.
    max_voices_per_user: int = Field(50, ge=1, le=10_000)
    # Webhooks (webhooks/): plain http URLs, and URLs resolving to loopback or private
    # addresses, are refused unless these are true (link-local and cloud metadata addresses
    # always are). A delivery waits at most WEBHOOK_TIMEOUT_SECONDS for an answer; a failed
    # one is tried again after each delay of the schedule in turn (seconds, "5,300,…"); an
    # endpoint failing without a success for WEBHOOK_DISABLE_AFTER_DAYS is disabled.
    webhook_allow_http: bool = False
    webhook_allow_private_networks: bool = False
    webhook_timeout_seconds: float = Field(10.0, gt=0, le=60)
    webhook_retry_delays_seconds: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    )
    webhook_disable_after_days: float = Field(5.0, gt=0)
    webhook_max_per_user: int = Field(20, ge=1, le=1000)
    # Deliveries one worker process sends at once.
    webhook_concurrency: int = Field(20, ge=1, le=1000)

    @field_validator("allowed_models", "openrouter_fallback_models", mode="before")
    @classmethod
    def _split_models(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)
            return [m.strip() for m in value.split(",") if m.strip()]
        return value

    @field_validator("webhook_retry_delays_seconds", mode="before")
    @classmethod
    def _split_delays(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        delays = [float(item) for item in value or []]  # a ValueError names the bad entry
        if any(not 0 <= delay <= 7 * 86400 for delay in delays) or len(delays) > 50:
            raise ValueError("give at most 50 delays of 0 to 604800 seconds, e.g. 5,300,1800")
        return delays

    @field_validator("model_prices", mode="before")
    @classmethod
    def _prices_json(cls, value: Any) -> Any:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("model_prices")
    @classmethod
    def _check_prices(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for model, price in value.items():
            if set(price) - {"prompt", "completion"} or any(v < 0 for v in price.values()):
                raise ValueError(
                    f'{model!r}: give {{"prompt": USD per token, "completion": USD per token}}'
                )
        return value

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().startswith("["):
                return json.loads(value)  # a ValueError becomes a ValidationError
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",") if p.strip()]
        for item in value or []:
            ipaddress.ip_network(str(item), strict=False)  # a ValueError names the entry
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _check_sentinels(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_sentinels(value)  # a ValueError names the bad entry
            return value.strip()
        return None

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        beat = self.worker_heartbeat_seconds
        if beat > 0 and self.worker_dead_after_seconds < 2 * beat:
            raise ValueError(
                "WORKER_DEAD_AFTER_SECONDS must be at least twice WORKER_HEARTBEAT_SECONDS "
                "(one late beat must not make a live worker look dead)"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    # --- derived ------------------------------------------------------------------------
    @cached_property
    def redis_connection_url(self) -> str:
        """The one Redis address every component uses (queue, Socket.IO, limits)."""
        if self.redis_url:
            return self.redis_url
        host = (self.redis_endpoint or "").strip() or "127.0.0.1"
        port_text = ""
        # Redis Cloud endpoints are often given as "host:port"; IPv6 as "[::1]:port" or "::1".
        if host.startswith("["):
            address, _, rest = host[1:].partition("]")
            host = f"[{address}]"
            port_text = rest.removeprefix(":")
        elif host.count(":") == 1:
            host, _, port_text = host.partition(":")
        elif ":" in host:
            host = f"[{host}]"
        if port_text and not port_text.isdigit():
            raise ConfigError(f"REDIS_ENDPOINT: {port_text!r} is not a port number")
        port = self.redis_port or (int(port_text) if port_text else 6379)
        scheme = "rediss" if self.redis_tls else "redis"
        auth = ""
        if self.redis_user or self.redis_password:
            auth = quote(self.redis_user or "", safe="")
            if self.redis_password:
                auth += ":" + quote(self.redis_password, safe="")
            auth += "@"
        return f"{scheme}://{auth}{host}:{port}/0"

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """REDIS_SENTINELS as (host, port) pairs; empty without Sentinel."""
        return parse_sentinels(self.redis_sentinels) if self.redis_sentinels else []

    @property
    def redis_display(self) -> str:
        """The Redis address without credentials, for logs and banners."""
        if self.redis_sentinels:
            hosts = ",".join(
                f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.sentinel_addresses
            )
            return f"sentinel://{hosts}/{self.redis_sentinel_master}"
        parts = urlsplit(self.redis_connection_url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"

    @property
    def llm_is_local(self) -> bool:
        """A loopback BASE_URL (Ollama, llama.cpp, vLLM) needs no key."""
        host = urlsplit(self.base_url).hostname or ""
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def mongo_database(self) -> str:
        if self.mongo_db:
            return self.mongo_db
        path = urlsplit(self.mongo_uri or "").path.lstrip("/")
        return path.split("/")[0] or "smartgen"

    # --- checks -------------------------------------------------------------------------
    def require_jwt_secret(self) -> str:
        secret = self.jwt_secret or ""
        if not secret:
            raise ConfigError(
                "JWT_SECRET is not set: set it to a random string of at least "
                f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`)"
            )
        weak = len(secret) < MIN_SECRET_LENGTH or secret.lower() in {
            "secret",
            "changeme",
            "change-me",
            "your-secret",
            "jwt_secret",
        }
        if weak and not self.allow_insecure_secret:
            raise ConfigError(
                f"JWT_SECRET is too weak: use at least {MIN_SECRET_LENGTH} random characters "
                "(or set ALLOW_INSECURE_SECRET=true for local development only)"
            )
        return secret

    @property
    def models_allowed(self) -> list[str]:
        """The models a job may name: ALLOWED_MODELS, else just OPENROUTER_MODEL."""
        return self.allowed_models or [self.openrouter_model]

    @property
    def fallback_models(self) -> list[str]:
        return self.openrouter_fallback_models

    @property
    def lease_seconds(self) -> float:
        return self.processing_lease_seconds or self.llm_timeout_seconds + 15.0

    @property
    def stream_max_seconds(self) -> float:
        """LLM_STREAM_MAX_SECONDS, or the processing lease less 5 s (at least the timeout)."""
        if self.llm_stream_max_seconds is not None:
            return self.llm_stream_max_seconds
        return max(self.llm_timeout_seconds, self.lease_seconds - 5.0)

    @property
    def retry_after_max_seconds(self) -> float:
        """The longest Retry-After honoured: the setting, within the processing lease."""
        return min(self.llm_retry_after_max_seconds, self.lease_seconds)

    @property
    def use_offline_llm(self) -> bool:
        """No key and no local server: write offline drafts (never when a key is set)."""
        if self.llm_provider == "offline":
            return True
        if self.llm_provider == "openai":
            return False
        return not self.openrouter_key and not self.llm_is_local

    def require_llm_credentials(self) -> None:
        if self.use_offline_llm:
            return
        if not self.openrouter_key and not self.llm_is_local:
            raise ConfigError(
                "OPENROUTER_KEY is not set: set it, or point BASE_URL at a local "
                "OpenAI-compatible server (e.g. http://127.0.0.1:11434/v1 for Ollama)"
            )


def parse_sentinels(text: str) -> list[tuple[str, int]]:
    """`host:port,host:port,…` (IPv6 as `[addr]:port`; the port defaults to 26379)."""
    out: list[tuple[str, int]] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        if not host or (port_text and not port_text.isdigit()):
            raise ValueError(f"{item!r} is not host:port")
        port = int(port_text) if port_text else 26379
        if not 0 < port < 65536:
            raise ValueError(f"{item!r}: port out of range")
        out.append((host, port))
    if not out:
        raise ValueError("no sentinel address given")
    return out


def load_settings(**overrides: Any) -> Settings:
    """Read settings once; turn pydantic's report into one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]).upper() or "settings"
        raise ConfigError(f"{name}: {first['msg']}") from None
    except SettingsError as exc:  # a value the environment source could not decode
        raise ConfigError(str(exc)) from None
