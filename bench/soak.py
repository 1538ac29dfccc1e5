"""smartgen soak: many users, several API processes, two workers, a flaky LLM, a worker
SIGKILLed and restarted midway; then check that nothing was lost or done twice.

    .venv/bin/python bench/soak.py [--quick] [--jobs 10000] [--users 100] [--store postgres]

Each user keeps a Socket.IO connection (websocket) to a random API process and submits its
jobs one at a time to random API processes; every prompt carries a marker `[m:<id>]` that
the fake LLM counts per successful answer. At the end (bounded waits) it checks:

- every accepted job is `completed` or `failed` in the store;
- each completed job was generated exactly once (the fake LLM's successful answers per
  marker); a second generation is legitimate only for a job whose first answer went to
  the killed worker (at-least-once execution), and is reported with its id;
- every owner received exactly one final event (`job_completed` / `job_failed`, matching
  the store) per job: duplicates and missing ones are counted separately; an event lost
  because the job became final before the kill and its event never reached Redis (still
  queued in the killed worker's publisher), or while the owner's socket was disconnected,
  is at-most-once delivery and is reported with its id.

Exits 1 when an invariant is broken (anything not explained as above), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
from harness import (
    BACKENDS,
    BENCH,
    Cleanup,
    FakeLLM,
    Listener,
    Proc,
    Redis,
    Smartgen,
    User,
    Workspace,
    close_listeners,
    connect_listeners,
    log,
    machine,
    percentile,
    register_users,
    run_main,
    smartgen_env,
)

KILL_MARGIN_S = 0.5  # clock granularity between the store's timestamps and ours


@dataclass
class Submission:
    marker: str
    user: User
    job_id: str | None = None
    status: int | None = None
    tries: int = 0


@dataclass
class Chaos:
    killed_at: float | None = None
    restarted_at: float | None = None
    killed_pid: int | None = None
    in_flight_at_kill: int | None = None
    notes: list[str] = field(default_factory=list)


async def submit_all(
    urls: list[str], users: list[User], per_user: int, subs: list[Submission]
) -> None:
    """Each user submits its jobs one after the other, each to a random API process."""
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=len(users) + 10)

    async def one_user(session: aiohttp.ClientSession, index: int, user: User) -> None:
        headers = {**user.headers, "Content-Type": "application/json"}
        for seq in range(per_user):
            sub = Submission(marker=f"u{index}-{seq}", user=user)
            subs.append(sub)
            body = json.dumps(
                {
                    "prompt": f"Soak job [m:{sub.marker}]: how to grow tomatoes, part {seq}",
                    "contentType": ("Blog Post Outline", "Product Description")[seq % 2],
                }
            )
            while sub.tries < 20:
                sub.tries += 1
                url = random.choice(urls) + "/generate-content"
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        sub.status = response.status
                        data = await response.json(content_type=None)
                        if response.status == 202:
                            sub.job_id = data["jobId"]
                            break
                        if response.status in (429, 503):
                            wait = float(response.headers.get("Retry-After") or 1)
                            await asyncio.sleep(min(wait, 5))
                            continue
                        break  # anything else is a refusal: reported, not retried
                except (aiohttp.ClientError, OSError, TimeoutError):
                    sub.status = -1
                    await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(one_user(session, i, u) for i, u in enumerate(users)))


async def final_count(probe: Any) -> tuple[int, dict[str, int]]:
    counts = await probe.counts()
    return counts.get("completed", 0) + counts.get("failed", 0), counts


async def chaos(
    smartgen: Smartgen,
    workers: list[Proc],
    probe: Any,
    llm: FakeLLM,
    total: int,
    kill_at: float,
    submitted: asyncio.Event,
    result: Chaos,
) -> None:
    """SIGKILL worker 1 once `kill_at` of the jobs are final (or once submission ends),
    then start a new worker 2 s later."""
    while True:
        done, _ = await final_count(probe)
        if done >= kill_at * total or submitted.is_set():
            break
        await asyncio.sleep(0.2)
    victim = workers[0]
    result.in_flight_at_kill = (await llm.stats())["in_flight"]
    result.killed_pid = victim.pid
    victim.kill()
    result.killed_at = time.time()
    log(f"  SIGKILLed worker {victim.pid} ({done} of {total} jobs final)")
    await asyncio.sleep(2.0)
    workers[0] = await smartgen.worker("worker-1-restarted")
    result.restarted_at = time.time()
    log(f"  restarted worker 1 as {workers[0].pid}")


class ChannelTap:
    """Subscribes to the Socket.IO Redis channel (in a thread of its own, so a busy event
    loop here cannot make Redis drop it) and notes when each final event was published:
    splits the event delay into worker → Redis and Redis → API → client."""

    PATTERN = "*socketio*"  # the Socket.IO channel's name, whatever the deployment's prefix

    def __init__(self, url: str) -> None:
        self.url = url
        self.published_at: dict[str, float] = {}
        self.published: dict[str, int] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="channel-tap", daemon=True)

    def _run(self) -> None:
        import redis

        from smartgen.realtime.batched_relay import manager_messages

        client = redis.Redis.from_url(self.url)
        pubsub = client.pubsub()
        try:
            pubsub.psubscribe(self.PATTERN)
            self._ready.set()
            while not self._stop.is_set():
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
                if message is None or message.get("type") not in ("message", "pmessage"):
                    continue
                at = time.time()
                # One published message may carry a batch of emits (RedisManager.emit_many).
                for data in manager_messages(json, message["data"]):
                    if data.get("event") not in ("job_completed", "job_failed"):
                        continue
                    payload = data.get("data")
                    if isinstance(payload, list | tuple) and payload:
                        payload = payload[0]
                    if isinstance(payload, dict) and payload.get("jobId"):
                        job_id = str(payload["jobId"])
                        self.published_at.setdefault(job_id, at)
                        self.published[job_id] = self.published.get(job_id, 0) + 1
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                pubsub.close()
                client.close()

    async def start(self) -> None:
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 10)

    async def close(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 5)


def log_warnings(log_dir: Any) -> dict[str, dict[str, int]]:
    """Warnings and errors in every process's log, counted by message (numbers masked),
    and Redis dropping a client for its output buffer (a lagging subscriber)."""
    import re

    found: dict[str, dict[str, int]] = {}
    for path in sorted(log_dir.glob("*.log")):
        name = path.name.rsplit("-", 1)[0]
        for line in path.read_text(errors="replace").splitlines():
            if not any(k in line for k in ("WARNING", "ERROR", "output buffer", "Traceback")):
                continue
            text = re.sub(r"^\S+ \S+ (WARNING|ERROR)\s+", r"\1 ", line)
            text = re.sub(r"\b[0-9a-f]{8}-[0-9a-f-]{27}\b|\d+(\.\d+)?", "#", text)[:160]
            bucket = found.setdefault(name, {})
            bucket[text] = bucket.get(text, 0) + 1
    return found


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _spread(values: list[float]) -> dict[str, float | None]:
    return {
        "p50": _round(percentile(values, 50)),
        "p99": _round(percentile(values, 99)),
        "max": _round(max(values) if values else None),
    }


def as_epoch(value: Any) -> float | None:
    if value is None:
        return None
    from smartgen.kit.times import as_utc

    return float(as_utc(value).timestamp())


def analyse(
    subs: list[Submission],
    jobs: list[dict[str, Any]],
    llm_stats: dict[str, Any],
    listeners: list[Listener],
    result: Chaos,
    tap: ChannelTap,
) -> tuple[dict[str, Any], list[str]]:
    """Counts, and the list of broken invariants (empty when all hold)."""
    broken: list[str] = []
    by_id = {j["job_id"]: j for j in jobs}
    accepted = [s for s in subs if s.job_id]
    refused = [s for s in subs if not s.job_id]
    ok_by_marker: dict[str, list[float]] = llm_stats.get("ok_by_marker", {})
    listener_of = {x.user.user_id: x for x in listeners}
    killed_at = result.killed_at or float("inf")

    status_counts: dict[str, int] = {}
    not_final, missing_in_store = [], []
    for s in accepted:
        job = by_id.get(s.job_id or "")
        if job is None:
            missing_in_store.append(s.job_id)
            continue
        status_counts[job["status"]] = status_counts.get(job["status"], 0) + 1
        if job["status"] not in ("completed", "failed"):
            not_final.append(s.job_id)

    # Generation: successful LLM answers per job.
    once = 0
    twice_kill: list[str] = []
    twice_unexplained: list[str] = []
    completed_without_call: list[str] = []
    failed_after_success_kill: list[str] = []
    failed_after_success: list[str] = []
    for s in accepted:
        job = by_id.get(s.job_id or "")
        if job is None:
            continue
        calls = sorted(ok_by_marker.get(s.marker, []))
        if job["status"] == "completed":
            if len(calls) == 1:
                once += 1
            elif not calls:
                completed_without_call.append(str(s.job_id))
            elif calls[0] <= killed_at:  # the first answer went to the killed worker
                twice_kill.append(str(s.job_id))
            else:
                twice_unexplained.append(str(s.job_id))
        elif job["status"] == "failed" and calls:
            (failed_after_success_kill if calls[0] <= killed_at else failed_after_success).append(
                str(s.job_id)
            )

    # Events: exactly one final event per job, of the kind the store says.
    exactly_one = 0
    delays_ms: list[float] = []
    publish_delays_ms: list[float] = []
    relay_delays_ms: list[float] = []
    never_published: list[str] = []
    kill_offsets_ms: dict[str, float] = {}
    duplicates: list[str] = []
    wrong_kind: list[str] = []
    missing_kill: list[str] = []
    missing_gap: list[str] = []
    missing_unexplained: list[str] = []
    missing_unpublished: list[str] = []
    for s in accepted:
        job = by_id.get(s.job_id or "")
        if job is None or job["status"] not in ("completed", "failed"):
            continue
        listener = listener_of[s.user.user_id]
        got = listener.final.get(str(s.job_id), [])
        final_at = as_epoch(job["completed_at"] or job["failed_at"]) or 0.0
        received_at = listener.final_at.get(str(s.job_id))
        published_at = tap.published_at.get(str(s.job_id))
        if received_at is not None and final_at:
            delays_ms.append((received_at - final_at) * 1000)
        if published_at is not None and final_at:
            publish_delays_ms.append((published_at - final_at) * 1000)
            if received_at is not None:
                relay_delays_ms.append((received_at - published_at) * 1000)
        if published_at is None:
            never_published.append(str(s.job_id))
        if len(got) == 1:
            exactly_one += 1
            if got[0] != job["status"]:
                wrong_kind.append(str(s.job_id))
        elif len(got) > 1:
            duplicates.append(str(s.job_id))
        elif published_at is None and final_at <= killed_at + KILL_MARGIN_S:
            # Final before the kill and never published: its event was still queued in
            # the killed worker's publisher (live workers publish everything; a dropped
            # event would show as a warning in their logs).
            missing_kill.append(str(s.job_id))
            kill_offsets_ms[str(s.job_id)] = round((final_at - killed_at) * 1000)
        elif listener.was_disconnected(final_at):
            missing_gap.append(str(s.job_id))
        elif published_at is None:
            missing_unexplained.append(str(s.job_id))
            missing_unpublished.append(str(s.job_id))
        else:
            missing_unexplained.append(str(s.job_id))
    known = {str(s.job_id) for s in accepted}
    unknown_events = sum(1 for x in listeners for job_id in x.final if job_id not in known)
    foreign = sum(x.foreign for x in listeners)

    counts = {
        "submitted": len(subs),
        "accepted": len(accepted),
        "refused": len(refused),
        "refused_statuses": sorted({s.status for s in refused if s.status is not None}),
        "store": status_counts,
        "not_final": len(not_final),
        "missing_in_store": len(missing_in_store),
        "llm": {
            k: llm_stats.get(k)
            for k in ("calls", "ok", "failed_500", "failed_400", "aborted", "max_in_flight")
        },
        "generated_exactly_once": once,
        "generated_twice_kill": len(twice_kill),
        "generated_twice_unexplained": len(twice_unexplained),
        "completed_without_llm_answer": len(completed_without_call),
        "failed_after_an_answer_kill": len(failed_after_success_kill),
        "failed_after_an_answer_unexplained": len(failed_after_success),
        "events_exactly_one": exactly_one,
        "events_duplicate": len(duplicates),
        "events_wrong_kind": len(wrong_kind),
        "events_missing_kill": len(missing_kill),
        "events_missing_disconnected": len(missing_gap),
        "events_missing_unexplained": len(missing_unexplained),
        "events_missing_unexplained_never_published": len(missing_unpublished),
        "events_unknown_jobs": unknown_events,
        "events_foreign": foreign,
        "socket_disconnects": sum(x.disconnects for x in listeners),
        "event_delay_ms": _spread(delays_ms),
        "publish_delay_ms": _spread(publish_delays_ms),
        "relay_delay_ms": _spread(relay_delays_ms),
        "final_events_never_published": len(never_published),
        "events_missing_kill_ms_from_kill": kill_offsets_ms,
        "ids": {
            "not_final": not_final[:50],
            "generated_twice_kill": twice_kill,
            "generated_twice_unexplained": twice_unexplained[:50],
            "completed_without_llm_answer": completed_without_call[:50],
            "failed_after_an_answer_kill": failed_after_success_kill,
            "failed_after_an_answer_unexplained": failed_after_success[:50],
            "events_duplicate": duplicates[:50],
            "events_wrong_kind": wrong_kind[:50],
            "events_missing_kill": missing_kill,
            "events_missing_disconnected": missing_gap[:50],
            "events_missing_unexplained": missing_unexplained[:50],
        },
    }
    checks = [
        (refused, "submissions refused after retries"),
        (missing_in_store, "accepted jobs missing from the store"),
        (not_final, "jobs not completed/failed in the store"),
        (twice_unexplained, "completed jobs generated more than once (not explained by the kill)"),
        (completed_without_call, "completed jobs without a successful LLM answer"),
        (failed_after_success, "failed jobs that had a successful LLM answer (not the kill)"),
        (duplicates, "jobs with more than one final event"),
        (wrong_kind, "final events that contradict the store"),
        (missing_unexplained, "jobs whose owner got no final event (not explained)"),
    ]
    broken = [f"{len(items)} {what}" for items, what in checks if items]
    if unknown_events:
        broken.append(f"{unknown_events} final events for jobs nobody submitted")
    if foreign:
        broken.append(f"{foreign} events delivered to another user")
    return counts, broken


def print_report(
    args: argparse.Namespace,
    counts: dict[str, Any],
    broken: list[str],
    result: Chaos,
    timings: dict[str, float],
    store_description: str,
) -> None:
    m = machine()
    c = counts
    print()
    print(
        f"== smartgen soak: {c['submitted']} jobs, {args.users} users, {args.apis} API "
        f"processes, 2 workers, store {args.store}"
    )
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}; store: {store_description}"
    )
    print(
        f"LLM: {args.latency_ms:g}-{args.latency_max_ms:g} ms, {args.fail_rate:.0%} injected "
        "failures (half 500 retryable, half 400 not)"
    )
    kill = (
        f"worker {result.killed_pid} SIGKILLed at +{timings.get('kill', 0):.1f} s with "
        f"{result.in_flight_at_kill} LLM calls in flight, restarted 2 s later"
        if result.killed_at
        else "no worker was killed"
    )
    print(f"chaos: {kill}")
    print(f"time: submitted in {timings['submit']:.1f} s, all final after {timings['final']:.1f} s")
    store = c["store"]
    llm = c["llm"]
    delay = c["event_delay_ms"]
    pub = c["publish_delay_ms"]
    relay = c["relay_delay_ms"]
    rows = [
        ("jobs accepted (202) / refused", f"{c['accepted']} / {c['refused']}"),
        (
            "store: completed / failed / other",
            f"{store.get('completed', 0)} / {store.get('failed', 0)} / {c['not_final']}",
        ),
        (
            "LLM calls: total / ok / 500 / 400 / aborted",
            f"{llm['calls']} / {llm['ok']} / {llm['failed_500']} / {llm['failed_400']} / "
            f"{llm['aborted']}",
        ),
        ("completed jobs generated exactly once", f"{c['generated_exactly_once']}"),
        ("  generated twice: first answer went to the killed worker",
         f"{c['generated_twice_kill']}"),
        ("  generated twice: unexplained", f"{c['generated_twice_unexplained']}"),
        ("  completed without an LLM answer", f"{c['completed_without_llm_answer']}"),
        (
            "failed jobs that had an LLM answer (kill / other)",
            f"{c['failed_after_an_answer_kill']} / {c['failed_after_an_answer_unexplained']}",
        ),
        ("jobs whose owner got exactly one final event", f"{c['events_exactly_one']}"),
        ("  duplicate final events", f"{c['events_duplicate']}"),
        ("  final event contradicting the store", f"{c['events_wrong_kind']}"),
        ("  missing: finished before the kill, never published (killed worker's backlog)",
         f"{c['events_missing_kill']}"),
        ("  missing: owner's socket was disconnected", f"{c['events_missing_disconnected']}"),
        ("  missing: unexplained (of which never published by a worker)",
         f"{c['events_missing_unexplained']} "
         f"({c['events_missing_unexplained_never_published']})"),
        ("events for unknown jobs / for another user", f"{c['events_unknown_jobs']} / "
                                                        f"{c['events_foreign']}"),
        ("socket disconnects", f"{c['socket_disconnects']}"),
        ("final event never published to Redis (worker side)",
         f"{c['final_events_never_published']}"),
        ("after catch-up from the event log (sync afterSeq): exactly one final event",
         f"{c['after_catch_up']['exactly_one_final_event']}"),
        ("  missing / duplicated final events",
         f"{c['after_catch_up']['missing_final_events']} / "
         f"{c['after_catch_up']['duplicated_final_events']}"),
        ("final event delay after the store write p50 / p99 / max",
         f"{delay['p50']} / {delay['p99']} / {delay['max']} ms"),
        ("  of which worker → Redis publish",
         f"{pub['p50']} / {pub['p99']} / {pub['max']} ms"),
        ("  of which Redis → API → client",
         f"{relay['p50']} / {relay['p99']} / {relay['max']} ms"),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    for key in (
        "generated_twice_kill",
        "failed_after_an_answer_kill",
        "events_missing_kill",
        "events_missing_disconnected",
    ):
        ids = c["ids"][key]
        if ids:
            print(f"{key}: {', '.join(ids[:20])}{' …' if len(ids) > 20 else ''}")
    offsets = sorted(c["events_missing_kill_ms_from_kill"].values())
    if offsets:
        print(f"events_missing_kill: jobs final {-offsets[-1]} to {-offsets[0]} ms before the kill")
    if c.get("tap_error"):
        print(f"channel tap failed: {c['tap_error']}")
    if c.get("log_warnings"):
        print("warnings and errors in the processes' logs:")
        for process, messages in c["log_warnings"].items():
            for text, n in sorted(messages.items(), key=lambda kv: -kv[1])[:5]:
                print(f"  {process}: {n} x {text}")
    print()
    if broken:
        print("INVARIANTS BROKEN:")
        for item in broken:
            print(f"  - {item}")
        for key, ids in c["ids"].items():
            if ids and key not in ("generated_twice_kill", "failed_after_an_answer_kill"):
                print(f"  {key}: {', '.join(ids[:10])}")
    else:
        print("all invariants hold")


async def after_catch_up(
    subs: list[Submission], jobs: list[dict[str, Any]], listeners: list[Any]
) -> tuple[dict[str, Any], list[str]]:
    """Final events per job once every owner caught up from the event log (`sync` with
    `afterSeq`) and merged it with what arrived live, by `seq`: the target is exactly one
    for every job, the kill included."""
    finals: dict[str, list[int]] = {}
    incomplete = 0
    for listener in listeners:
        merged, complete = await listener.catch_up()
        incomplete += 0 if complete else 1
        for seq, (event, job_id) in merged.items():
            if event in ("job_completed", "job_failed"):
                finals.setdefault(job_id, []).append(seq)
    final_ids = {str(j["job_id"]) for j in jobs if j["status"] in ("completed", "failed")}
    accepted = {str(s.job_id) for s in subs if s.job_id}
    missing = sorted(j for j in accepted & final_ids if not finals.get(j))
    duplicated = sorted(j for j in accepted if len(finals.get(j, [])) > 1)
    counts = {
        "exactly_one_final_event": sum(1 for j in accepted if len(finals.get(j, [])) == 1),
        "missing_final_events": len(missing),
        "duplicated_final_events": len(duplicated),
        "logs_incomplete": incomplete,
        "ids": {"missing": missing[:50], "duplicated": duplicated[:50]},
    }
    broken = []
    if missing:
        broken.append(f"{len(missing)} jobs without a final event after catch-up")
    if duplicated:
        broken.append(f"{len(duplicated)} jobs with more than one final event after catch-up")
    if incomplete:
        broken.append(f"{incomplete} event logs no longer held every event (raise the limits)")
    return counts, broken


async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    ws = Workspace(cleanup, keep=args.keep)
    log(f"soak: {args.jobs} jobs, {args.users} users, store {args.store} (workspace {ws.dir})")
    redis = Redis(ws)
    llm = FakeLLM(ws)
    backend = BACKENDS[args.store](ws)
    await asyncio.gather(redis.start(), llm.start(), backend.start())
    await llm.configure(
        latency_ms=args.latency_ms, latency_max_ms=args.latency_max_ms, fail_rate=args.fail_rate
    )
    store_env = await backend.database("soak")
    import secrets

    env = smartgen_env(
        redis_url=redis.url,
        store_env=store_env,
        llm_base_url=llm.base_url,
        jwt_secret=secrets.token_hex(32),
        queue_prefix=f"soak{secrets.token_hex(3)}",
        GENERATION_DELAY_SECONDS="1",
        JOB_BACKOFF_MS="300",
        LOCK_DURATION_MS="5000",
        STALLED_INTERVAL_MS="5000",
        SHUTDOWN_GRACE_SECONDS="5",
        LLM_TIMEOUT_SECONDS="10",
        RECONCILE_INTERVAL_SECONDS="10",
        RECONCILE_GRACE_SECONDS="15",
        WORKER_CONCURRENCY="50",
        # Every event of the run stays in the users' logs for the catch-up.
        EVENT_LOG_MAX_EVENTS="20000",
    )
    if args.src:  # before/after runs: smartgen imported from another checkout's src/
        env["PYTHONPATH"] = args.src
    smartgen = Smartgen(ws, env)
    probe = backend.probe(env)
    listeners: list[Listener] = []
    tap = ChannelTap(redis.url)
    try:
        await tap.start()
        apis = await asyncio.gather(*(smartgen.api(f"api-{i + 1}") for i in range(args.apis)))
        urls = [url for _, url in apis]
        workers = [await smartgen.worker(f"worker-{i + 1}") for i in range(2)]
        users = await register_users(urls, args.users, tag="soak")
        listeners = await connect_listeners([(random.choice(urls), u) for u in users])
        log(f"  {len(apis)} APIs, 2 workers, {len(users)} users connected; submitting")
        per_user = -(-args.jobs // args.users)
        subs: list[Submission] = []
        submitted = asyncio.Event()
        chaos_result = Chaos()
        began = time.time()
        chaos_task = asyncio.create_task(
            chaos(smartgen, workers, probe, llm, args.jobs, args.kill_at, submitted, chaos_result)
        )
        await submit_all(urls, users, per_user, subs)
        submitted.set()
        submit_s = time.time() - began
        accepted = sum(1 for s in subs if s.job_id)
        log(f"  {accepted} jobs accepted in {submit_s:.1f} s; waiting for them to finish")
        await asyncio.wait_for(chaos_task, 120)
        deadline = time.monotonic() + args.timeout
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            done, counts = await final_count(probe)
            if done >= accepted:
                break
            await asyncio.sleep(0.5)
        final_s = time.time() - began
        log(f"  store: {counts} after {final_s:.1f} s; waiting for the last events")
        # Events trail the store by a few ms; wait until they stop coming (bounded).
        last, still = -1, 0
        for _ in range(60):
            now = sum(len(x.final) for x in listeners)
            still = still + 1 if now == last else 0
            if still >= 6 or now >= accepted:
                break
            last = now
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)
        llm_stats = await llm.stats(markers=True)
        jobs = await probe.jobs()
        counts_out, broken = analyse(subs, jobs, llm_stats, listeners, chaos_result, tap)
        caught, more_broken = await after_catch_up(subs, jobs, listeners)
        counts_out["after_catch_up"] = caught
        broken += more_broken
        timings = {
            "submit": submit_s,
            "final": final_s,
            "kill": (chaos_result.killed_at or began) - began,
        }
        counts_out["tap_error"] = tap.error
        counts_out["log_warnings"] = log_warnings(ws.logs)
        print_report(args, counts_out, broken, chaos_result, timings, await backend.describe())
        out_dir = BENCH / "results"
        out_dir.mkdir(exist_ok=True)
        path = out_dir / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-soak-{args.store}.json"
        path.write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "machine": machine(),
                    "timings_s": timings,
                    "chaos": chaos_result.__dict__,
                    "counts": counts_out,
                    "broken": broken,
                },
                indent=2,
                default=str,
            )
            + "\n"
        )
        print(f"JSON: {path}")
        return 1 if broken else 0
    finally:
        await tap.close()
        await close_listeners(listeners)
        await probe.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="smartgen soak test")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--apis", type=int, default=3)
    parser.add_argument("--store", choices=tuple(BACKENDS), default="postgres")
    parser.add_argument("--quick", action="store_true", help="1,000 jobs from 20 users")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--latency-max-ms", type=float, default=200.0)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--kill-at", type=float, default=0.4, help="share of jobs final")
    parser.add_argument("--timeout", type=float, default=300.0, help="wait for final states")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    parser.add_argument("--src", help="run smartgen from this src/ directory (PYTHONPATH)")
    args = parser.parse_args()
    if args.src:
        args.src = os.path.abspath(args.src)
    if args.quick:
        args.jobs, args.users = 1000, 20
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
