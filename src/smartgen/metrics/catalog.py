"""Every metric smartgen exports, defined once, with Prometheus naming (`_total`,
`_seconds`, base units) and bounded labels: route templates, methods, statuses, content
types, models and kinds, never a user's or a job's id.

With several API processes (`API_WORKERS` > 1) prometheus_client's multiprocess mode is
on (`PROMETHEUS_MULTIPROC_DIR`, set by `smartgen api` itself before its processes import
this): every process writes its values to files there, and whichever process answers a
scrape adds them up (`exposition.py`). Gauges say how to add up (`multiprocess_mode`).

Queue depth is not here: it is read from Redis when scraped (`exposition.QueueDepth`).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# HTTP ---------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "smartgen_http_requests_total",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "smartgen_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

# Jobs ---------------------------------------------------------------------------------------
JOBS = Counter(
    "smartgen_jobs_total",
    "Jobs that reached a state: queued, completed, failed, cancelled",
    ["content_type", "state"],
)
JOB_RETRIES = Counter(
    "smartgen_job_retries_total",
    "Attempts started after a job's first (retries after an error)",
    ["content_type"],
)
QUEUE_WAIT = Histogram(
    "smartgen_job_queue_wait_seconds",
    "From a job's scheduled time to the start of its first attempt",
    ["content_type"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0),
)
PROCESSING = Histogram(
    "smartgen_job_processing_seconds",
    "From the start of a job's last attempt to its completion or failure",
    ["content_type", "state"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0),
)

# The model ----------------------------------------------------------------------------------
LLM_DURATION = Histogram(
    "smartgen_llm_request_duration_seconds",
    "Model calls, from request to answer (errors included)",
    ["model"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0),
)
LLM_ERRORS = Counter(
    "smartgen_llm_errors_total",
    "Model calls that failed, by kind: rate_limited, server_error, timeout, unreachable, "
    "refused (a 4xx other than 429), malformed",
    ["model", "kind"],
)
LLM_TOKENS = Counter(
    "smartgen_llm_tokens_total",
    "Tokens the model provider reported, by kind: prompt, completion",
    ["model", "kind"],
)
LLM_COST = Counter(
    "smartgen_llm_cost_usd_total",
    "Cost the model provider reported for its answers (OpenRouter's usage.cost), in USD",
    ["model"],
)

# Real time ----------------------------------------------------------------------------------
SOCKETIO_CONNECTIONS = Gauge(
    "smartgen_socketio_connections",
    "Socket.IO connections open on the API",
    multiprocess_mode="livesum",
)
EVENTS = Counter(
    "smartgen_events_total",
    "Job events handed to the event bus, by outcome: published, dropped",
    ["outcome"],
)


# Labelled children looked up once per label set, not through prometheus_client's locked
# `labels()` (a lock, a tuple and a dict lookup) on every job or event; bounded, for label
# values a caller could vary (past the bound, `labels()` as usual).
_children: dict[tuple[Any, tuple[str, ...]], Any] = {}
MAX_CHILDREN = 4096


def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, remembered."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = metric.labels(*labels)
        if len(_children) < MAX_CHILDREN:
            _children[key] = found
    return found


def events_published(count: int) -> None:
    child(EVENTS, "published").inc(count)


def events_dropped(count: int) -> None:
    child(EVENTS, "dropped").inc(count)
