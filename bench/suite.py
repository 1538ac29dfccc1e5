"""smartgen benchmark suite: one command, a table of figures against their targets, JSON.

    .venv/bin/python bench/suite.py [--store postgres|sqlite|mongo|all] [--quick]

It starts everything it needs on loopback (a private redis-server, the store, a fake LLM
server with configurable latency, real `smartgen api` / `smartgen worker` processes) and
measures, each on a fresh database and queue:

1. ingest       POST /generate-content and GET /generate-content/:id at concurrency 1, 16,
                64 from a separate load process (wrk, else bench/loadgen.py); no worker runs
2. cost         N jobs, no delay, 0 ms LLM, through one worker: jobs/s and CPU ms per job
                of the API (POST + Socket.IO fan-out) and of the worker
3. concurrency  N jobs with a 1 s LLM and WORKER_CONCURRENCY=200: throughput vs ideal
4. timing       start lateness (startedAt - scheduledFor) of jobs spread over a minute
5. memory       worker RSS with 1,000 jobs in flight; API RSS idle and under load

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    BACKENDS,
    BENCH,
    PYTHON,
    Cleanup,
    FakeLLM,
    Probe,
    Proc,
    Profiler,
    Redis,
    Smartgen,
    StoreBackend,
    User,
    Workspace,
    close_listeners,
    connect_listeners,
    create_accounts,
    log,
    machine,
    mint_users,
    ms_between,
    percentile,
    reference_cpu_ms,
    register_users,
    run_main,
    smartgen_env,
    summarize_profile,
    wait_final,
    wait_idle,
)
from loadgen import post_factory, run_load

PHASES = ("ingest", "cost", "concurrency", "timing", "memory")
CONCURRENCIES = (1, 16, 64)  # the ingest phase's connection counts
MONGO_NOTE = (
    "NOTE: the MongoDB figures come from SecantusDB, the MongoDB wire-protocol TEST server; "
    "they are not representative of MongoDB's speed."
)


@dataclass(frozen=True)
class Plan:
    quick: bool
    ingest_seconds: float  # per load run
    users: int
    cost_jobs: int
    concurrency_jobs: int
    concurrency_latency_ms: int
    concurrency_workers: int
    timing_jobs: int
    timing_span_s: float
    timing_delay_s: float
    memory_jobs: int


FULL = Plan(False, 6.0, 8, 5000, 2000, 1000, 200, 1000, 60.0, 5.0, 1000)
QUICK = Plan(True, 3.0, 8, 1500, 1000, 1000, 200, 200, 15.0, 3.0, 1000)
# SecantusDB (the MongoDB test server) drains ~20-50 jobs/s: smaller counts keep
# `--store all` well under 15 minutes; its figures are not MongoDB's anyway.
MONGO_FULL = replace(
    FULL, ingest_seconds=4.0, cost_jobs=1500, concurrency_jobs=600, timing_jobs=500,
    timing_span_s=30.0,
)  # fmt: skip
MONGO_QUICK = replace(QUICK, cost_jobs=600, concurrency_jobs=400)

# Targets from issue 6 (this 2-core machine).
# Jobs per user at most, so that the per-user cap on unfinished jobs is never reached.
JOBS_PER_USER = 20
WARMUP_SECONDS = 1.0  # before each ingest run, at its concurrency; not counted
TARGET_CPU_MS = 2.0
TARGET_INGEST_RPS = 1500.0
TARGET_INGEST_P99_MS = 50.0
TARGET_CONCURRENCY = 0.90
TARGET_LATENESS_P99_MS = 250.0
TARGET_WORKER_RSS_MB = 150.0


class RssSampler:
    """Samples a process's RSS in the background; `max_mb` is the largest seen."""

    def __init__(self, proc: Proc, every: float = 0.1) -> None:
        self.proc = proc
        self.every = every
        self.max_mb = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                self.max_mb = max(self.max_mb, self.proc.rss_mb())
            except OSError:
                return
            await asyncio.sleep(self.every)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._task is not None:
            self._task.cancel()


class System:
    """One measurement's processes, database and queue prefix."""

    def __init__(self, suite: Suite, label: str, env: dict[str, str], probe: Probe) -> None:
        self.suite = suite
        self.label = label
        self.env = env
        self.probe = probe
        self.smartgen = Smartgen(suite.ws, env)
        self.procs: list[Proc] = []

    async def api(self, **extra: str) -> tuple[Proc, str]:
        proc, url = await self.smartgen.api(f"api-{self.label}", **extra)
        self.procs.append(proc)
        return proc, url

    async def worker(self, **extra: str) -> Proc:
        proc = await self.smartgen.worker(f"worker-{self.label}", **extra)
        self.procs.append(proc)
        return proc

    async def close(self) -> None:
        for proc in reversed(self.procs):
            await asyncio.to_thread(proc.stop)
        await self.probe.close()
        await self.suite.redis.flushall()
        try:
            await self.suite.backend.drop_database(self.env)
        except Exception as exc:  # the final clean-up drops it again
            log(f"  could not drop the {self.label} database yet: {exc}")


class Suite:
    def __init__(
        self,
        backend: StoreBackend,
        plan: Plan,
        ws: Workspace,
        redis: Redis,
        llm: FakeLLM,
        *,
        profile_prefix: Path | None = None,
        src: Path | None = None,
        api_workers: int = 1,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings or {}
        self.plan = plan
        self.ws = ws
        self.redis = redis
        self.llm = llm
        self.jwt_secret = secrets.token_hex(32)
        self.profile_prefix = profile_prefix
        self.profiles: dict[str, Any] = {}
        self.src = src
        self.api_workers = api_workers

    @contextlib.asynccontextmanager
    async def profiled(self, proc: Proc, name: str) -> AsyncIterator[None]:
        """py-spy on `proc` while the block runs (with --profile); summary kept by name."""
        if self.profile_prefix is None:
            yield
            return
        out = self.profile_prefix.with_name(f"{self.profile_prefix.name}-{name}.txt")
        async with Profiler(proc.pid, out):
            yield
        self.profiles[name] = {"file": str(out), **summarize_profile(out)}

    async def system(self, label: str, **extra: str) -> System:
        store_env = await self.backend.database(label)
        env = smartgen_env(
            redis_url=self.redis.url,
            store_env=store_env,
            llm_base_url=self.llm.base_url,
            jwt_secret=self.jwt_secret,
            queue_prefix=f"bench{secrets.token_hex(3)}",
            **extra,
        )
        env.update(self.settings)
        if self.api_workers > 1:
            env["API_WORKERS"] = str(self.api_workers)
        if self.src is not None:  # A/B runs: smartgen imported from another checkout
            env["PYTHONPATH"] = str(self.src)
        return System(self, label, env, self.backend.probe(env))

    async def users(self, url: str, jobs: int, system: System) -> list[User]:
        """`plan.users` registered users, plus minted ones (with accounts written to the
        store) so that no user holds more than JOBS_PER_USER unfinished jobs (the API caps
        them: MAX_UNFINISHED_JOBS)."""
        registered = await register_users([url], self.plan.users)
        minted = mint_users(self.jwt_secret, max(0, -(-jobs // JOBS_PER_USER) - len(registered)))
        await create_accounts(system.env, minted)
        return registered + minted

    async def submit(
        self, url: str, users: list[User], count: int, *, concurrency: int = 32, **kw: Any
    ) -> dict[str, Any]:
        result = await run_load(
            url,
            post_factory([u.token for u in users]),
            concurrency=concurrency,
            count=count,
            **kw,
        )
        summary = result.summary(202)
        if summary["ok"] != count:
            log(f"  warning: {count - summary['ok']} submissions failed: {summary['statuses']}")
        return summary

    # --- 1. ingest -----------------------------------------------------------------------
    async def ingest(self) -> dict[str, Any]:
        plan = self.plan
        system = await self.system("ingest")
        try:
            api, url = await system.api()
            users = await self.users(url, 3000 * JOBS_PER_USER, system)
            tokens_file = self.ws.dir / "tokens.txt"
            tokens_file.write_text("".join(u.token + "\n" for u in users))
            await asyncio.sleep(1.0)
            rss_idle = api.rss_mb()
            tool = os.environ.get("BENCH_LOAD_TOOL") or (
                "wrk" if shutil.which("wrk") else "loadgen"
            )
            log(f"  load tool: {tool}; API RSS idle {rss_idle:.1f} MB; warming up")
            await self.load(tool, "post", url, tokens_file, 16, 1.5)
            post = []
            rss_load = 0.0
            for concurrency in CONCURRENCIES:
                # Not counted: the server's pools grow to this concurrency (new Redis and
                # database connections), as they would in a steady state.
                await self.load(tool, "post", url, tokens_file, concurrency, WARMUP_SECONDS)
                with RssSampler(api) as sampler:
                    async with self.profiled(api, f"api-ingest-post-c{concurrency}"):
                        figures = await self.measured_load(
                            api, tool, "post", url, tokens_file, concurrency, plan.ingest_seconds
                        )
                rss_load = max(rss_load, sampler.max_mb)
                log(f"  POST c={concurrency}: {fmt_load(figures)}")
                post.append(figures)
            pairs_file = self.ws.dir / "pairs.txt"
            by_user = {u.user_id: u.token for u in users}
            sample = await system.probe.sample(400)
            pairs_file.write_text("".join(f"{by_user[u]} {j}\n" for u, j in sample))
            get = []
            for concurrency in CONCURRENCIES:
                await self.load(tool, "get", url, pairs_file, concurrency, WARMUP_SECONDS)
                with RssSampler(api) as sampler:
                    figures = await self.measured_load(
                        api, tool, "get", url, pairs_file, concurrency, plan.ingest_seconds
                    )
                rss_load = max(rss_load, sampler.max_mb)
                log(f"  GET  c={concurrency}: {fmt_load(figures)}")
                get.append(figures)
            counts = await system.probe.counts()
            return {
                "tool": tool,
                "worker_running": False,
                "seconds_per_run": plan.ingest_seconds,
                "users": plan.users,
                "post": post,
                "get": get,
                "jobs_in_store": counts,
                "api_rss_idle_mb": round(rss_idle, 1),
                "api_rss_load_mb": round(rss_load, 1),
            }
        finally:
            await system.close()

    async def measured_load(
        self,
        api: Proc,
        tool: str,
        mode: str,
        url: str,
        targets: Path,
        concurrency: int,
        seconds: float,
    ) -> dict[str, Any]:
        """`load`, plus the API's CPU time per answered request: a figure that depends
        less than req/s on how fast the machine runs at that moment."""
        cpu0 = api.cpu_seconds()
        figures = await self.load(tool, mode, url, targets, concurrency, seconds)
        answered = figures["ok"] + figures["non_ok"]
        figures["api_cpu_ms_per_request"] = round(
            (api.cpu_seconds() - cpu0) * 1000 / max(1, answered), 3
        )
        return figures

    async def load(
        self, tool: str, mode: str, url: str, targets: Path, concurrency: int, seconds: float
    ) -> dict[str, Any]:
        if tool == "wrk":
            args = [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(BENCH / "wrk" / f"{mode}.lua"),
                url,
                "--",
                str(targets),
            ]
        else:
            args = [
                PYTHON,
                str(BENCH / "loadgen.py"),
                "--base", url,
                "--mode", mode,
                "--targets", str(targets),
                "--concurrency", str(concurrency),
                "--duration", str(seconds),
            ]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        text = out.decode(errors="replace")
        if tool == "loadgen":
            return dict(json.loads(text.strip().splitlines()[-1]))
        line = next((x for x in text.splitlines() if x.startswith("WRKJSON ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no figures:\n{text}\n{err.decode()}")
        raw = json.loads(line[len("WRKJSON ") :])
        errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
        ok = raw["requests"] - raw["status_errors"]
        duration = raw["duration_us"] / 1e6
        return {
            "concurrency": concurrency,
            "requests": raw["requests"],
            "ok": ok,
            "non_ok": raw["status_errors"],
            "errors": errors,
            "duration_s": round(duration, 3),
            "rps": round(ok / duration, 1) if duration else 0.0,
            "p50_ms": round(raw["p50_us"] / 1000, 2),
            "p90_ms": round(raw["p90_us"] / 1000, 2),
            "p99_ms": round(raw["p99_us"] / 1000, 2),
            "max_ms": round(raw["max_us"] / 1000, 2),
        }

    # --- 2. per-job cost -------------------------------------------------------------------
    async def cost(self) -> dict[str, Any]:
        plan = self.plan
        n = plan.cost_jobs
        await self.llm.configure(latency_ms=0, fail_rate=0, hold=False)
        await self.llm.reset()
        reference_before = reference_cpu_ms()
        system = await self.system("cost")
        listeners = []
        try:
            api, url = await system.api()
            users = await self.users(url, n, system)
            # One Socket.IO client per registered user: the API relays the worker's events.
            listeners = await connect_listeners([(url, u) for u in users[: plan.users]])
            await asyncio.sleep(0.5)
            await self.redis.command_counts(reset=True)
            api_cpu0 = api.cpu_seconds()
            async with self.profiled(api, "api-post"):
                submitted = await self.submit(url, users, n, concurrency=32)
            api_cpu1 = api.cpu_seconds()
            redis_post = await self.redis.command_counts(reset=True)
            log(f"  {n} jobs queued at {submitted['rps']:.0f}/s (no worker running)")
            worker = await system.worker(WORKER_CONCURRENCY="50")
            worker_cpu0, api_cpu2, began = worker.cpu_seconds(), api.cpu_seconds(), time.time()
            async with self.profiled(worker, "worker-drain"), self.profiled(api, "api-events"):
                counts, finished = await wait_final(system.probe, submitted["ok"], 40 + n / 20)
            drained = time.time() - began
            worker_cpu1 = worker.cpu_seconds()
            redis_drain = await self.redis.command_counts()
            # The API's share of the drain: relaying the worker's events to the sockets.
            jobs = await system.probe.jobs()
            connected = {x.user.user_id for x in listeners}
            expected = sum(1 for j in jobs if j["user_id"] in connected)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if sum(len(x.final) for x in listeners) >= expected:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)
            api_cpu3 = api.cpu_seconds()
            reference_after = reference_cpu_ms()
            done = [j for j in jobs if j["status"] == "completed"]
            window = _window_s(done)
            total = max(1, counts.get("completed", 0) + counts.get("failed", 0))
            api_post_ms = (api_cpu1 - api_cpu0) * 1000 / max(1, submitted["ok"])
            api_events_ms = (api_cpu3 - api_cpu2) * 1000 / total
            worker_ms = (worker_cpu1 - worker_cpu0) * 1000 / total
            llm = await self.llm.stats()
            figures = {
                "jobs": n,
                "worker_concurrency": 50,
                "finished": finished,
                "counts": counts,
                "submit_rps": submitted["rps"],
                "jobs_per_s": round(len(done) / window, 1) if window else None,
                "drain_wall_s": round(drained, 2),
                "api_cpu_ms_per_job_post": round(api_post_ms, 3),
                "api_cpu_ms_per_job_events": round(api_events_ms, 3),
                "api_cpu_ms_per_job": round(api_post_ms + api_events_ms, 3),
                "worker_cpu_ms_per_job": round(worker_ms, 3),
                "total_cpu_ms_per_job": round(api_post_ms + api_events_ms + worker_ms, 3),
                "reference_cpu_ms": [reference_before, reference_after],
                "socketio_clients": len(listeners),
                "final_events_expected": expected,
                "final_events_received": sum(len(x.final) for x in listeners),
                "llm_calls": llm["calls"],
                "worker_rss_mb": round(worker.rss_mb(), 1),
                "api_rss_mb": round(api.rss_mb(), 1),
                "redis_calls_per_job_post": _per_job(redis_post, max(1, submitted["ok"])),
                "redis_calls_per_job_drain": _per_job(redis_drain, total),
            }
            log(
                f"  drained in {drained:.1f} s: {figures['jobs_per_s']} jobs/s; CPU per job: "
                f"API {api_post_ms:.2f} + {api_events_ms:.2f} (events) ms, "
                f"worker {worker_ms:.2f} ms"
            )
            log(
                f"  machine speed: reference workload {reference_before} ms CPU before, "
                f"{reference_after} ms after (lower is faster)"
            )
            for label, calls in (
                ("queueing", figures["redis_calls_per_job_post"]),
                ("processing", figures["redis_calls_per_job_drain"]),
            ):
                log(f"  Redis calls per job, {label}: {_fmt_calls(calls)}")
            return figures
        finally:
            await close_listeners(listeners)
            await system.close()

    # --- 3. concurrency --------------------------------------------------------------------
    async def concurrency(self) -> dict[str, Any]:
        plan = self.plan
        n, latency, slots = (
            plan.concurrency_jobs,
            plan.concurrency_latency_ms,
            plan.concurrency_workers,
        )
        await self.llm.configure(latency_ms=latency, fail_rate=0, hold=False)
        await self.llm.reset()
        system = await self.system("concurrency")
        try:
            _, url = await system.api()
            users = await self.users(url, n, system)
            submitted = await self.submit(url, users, n, concurrency=32)
            worker = await system.worker(WORKER_CONCURRENCY=str(slots))
            began = time.time()
            ideal = slots / (latency / 1000)
            async with self.profiled(worker, "worker-concurrency"):
                counts, finished = await wait_final(
                    system.probe, submitted["ok"], 30 + 3 * n / ideal
                )
            wall = time.time() - began
            jobs = await system.probe.jobs()
            done = [j for j in jobs if j["status"] == "completed"]
            window = _window_s(done)
            throughput = len(done) / window if window else 0.0
            llm = await self.llm.stats()
            figures = {
                "jobs": n,
                "llm_latency_ms": latency,
                "worker_concurrency": slots,
                "finished": finished,
                "counts": counts,
                "ideal_jobs_per_s": round(ideal, 1),
                "jobs_per_s": round(throughput, 1),
                "ratio": round(throughput / ideal, 3),
                "window_s": round(window or 0, 2),
                "wall_s": round(wall, 2),
                "llm_max_in_flight": llm["max_in_flight"],
                "worker_rss_mb": round(worker.rss_mb(), 1),
            }
            log(
                f"  {throughput:.1f} jobs/s of an ideal {ideal:.0f} ({throughput / ideal:.0%}); "
                f"LLM max in flight {llm['max_in_flight']}"
            )
            return figures
        finally:
            await self.llm.configure(latency_ms=0)
            await system.close()

    # --- 4. timing precision -----------------------------------------------------------------
    async def timing(self) -> dict[str, Any]:
        plan = self.plan
        n, span, delay = plan.timing_jobs, plan.timing_span_s, plan.timing_delay_s
        await self.llm.configure(latency_ms=0, fail_rate=0, hold=False)
        system = await self.system("timing", GENERATION_DELAY_SECONDS=f"{delay:g}")
        try:
            _, url = await system.api()
            users = await self.users(url, n, system)
            await system.worker(WORKER_CONCURRENCY="50")
            log(f"  submitting {n} jobs over {span:.0f} s (delay {delay:g} s)")
            submitted = await self.submit(url, users, n, concurrency=16, rate=n / span)
            counts, finished = await wait_final(system.probe, submitted["ok"], delay + 60)
            jobs = await system.probe.jobs()
            lateness = [
                ms
                for j in jobs
                if (ms := ms_between(j["started_at"], j["scheduled_for"])) is not None
            ]
            early = [x for x in lateness if x < 0]
            figures = {
                "jobs": n,
                "span_s": span,
                "delay_s": delay,
                "finished": finished,
                "counts": counts,
                "measured": len(lateness),
                "lateness_p50_ms": _round(percentile(lateness, 50)),
                "lateness_p99_ms": _round(percentile(lateness, 99)),
                "lateness_max_ms": _round(max(lateness) if lateness else None),
                "lateness_min_ms": _round(min(lateness) if lateness else None),
                "started_early": len(early),
            }
            log(
                f"  lateness p50 {figures['lateness_p50_ms']} ms, p99 "
                f"{figures['lateness_p99_ms']} ms, max {figures['lateness_max_ms']} ms"
            )
            return figures
        finally:
            await system.close()

    # --- 5. memory ---------------------------------------------------------------------------
    async def memory(self) -> dict[str, Any]:
        plan = self.plan
        n = plan.memory_jobs
        await self.llm.reset()
        await self.llm.configure(hold=True)
        system = await self.system("memory")
        try:
            api, url = await system.api()
            users = await self.users(url, n, system)
            worker = await system.worker(
                WORKER_CONCURRENCY=str(n), LLM_TIMEOUT_SECONDS="300", SHUTDOWN_GRACE_SECONDS="5"
            )
            await asyncio.sleep(1.0)
            worker_idle = worker.rss_mb()
            api_idle = api.rss_mb()
            with RssSampler(api) as api_sampler, RssSampler(worker) as worker_sampler:
                await self.submit(url, users, n, concurrency=64)
                deadline = time.monotonic() + 90
                in_flight = 0
                while time.monotonic() < deadline:
                    in_flight = (await self.llm.stats())["in_flight"]
                    if in_flight >= n:
                        break
                    await asyncio.sleep(0.25)
                await asyncio.sleep(1.0)
                worker_in_flight = worker.rss_mb()
                api_load = api_sampler.max_mb
                await self.llm.release()
                counts, finished = await wait_final(system.probe, n, 90)
                worker_max = worker_sampler.max_mb
            figures = {
                "jobs": n,
                "worker_concurrency": n,
                "llm_in_flight": in_flight,
                "worker_rss_idle_mb": round(worker_idle, 1),
                "worker_rss_in_flight_mb": round(worker_in_flight, 1),
                "worker_rss_max_mb": round(worker_max, 1),
                "api_rss_idle_mb": round(api_idle, 1),
                "api_rss_load_mb": round(api_load, 1),
                "finished": finished,
                "counts": counts,
            }
            log(
                f"  worker RSS {worker_idle:.0f} MB idle, {worker_in_flight:.0f} MB with "
                f"{in_flight} in flight (max {worker_max:.0f} MB)"
            )
            return figures
        finally:
            await self.llm.configure(hold=False)
            await self.llm.release()
            await system.close()


def _per_job(counts: dict[str, int], jobs: int) -> dict[str, float]:
    """Redis calls per job by command (commands run by scripts included), largest first."""
    per = {name: round(calls / jobs, 2) for name, calls in counts.items()}
    per = {name: v for name, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.01}
    return {"total": round(sum(per.values()), 2), **per}


def _fmt_calls(calls: dict[str, float]) -> str:
    rest = ", ".join(f"{name} {v:g}" for name, v in list(calls.items())[1:9])
    return f"{calls['total']:g} ({rest})"


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def _window_s(jobs: list[dict[str, Any]]) -> float | None:
    """From the first job's start to the last job's completion."""
    starts = [j["started_at"] for j in jobs if j["started_at"] is not None]
    ends = [j["completed_at"] for j in jobs if j["completed_at"] is not None]
    if not starts or not ends:
        return None
    window = ms_between(max(ends), min(starts))
    return window / 1000 if window else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def fmt_load(figures: dict[str, Any]) -> str:
    bad = figures.get("non_ok", 0) + figures.get("errors", 0)
    cpu = figures.get("api_cpu_ms_per_request")
    return (
        f"{figures['rps']:.0f} req/s, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms"
        + (f", API CPU {cpu:.3f} ms/req" if cpu is not None else "")
        + (f", {bad} failed" if bad else "")
    )


# --- repeated runs -----------------------------------------------------------------------------
def _post_c64(figures: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in figures["post"] if r["concurrency"] == max(CONCURRENCIES))


# What `--repeat` orders a phase's runs by (the run in the middle is reported), and how
# each run is summed up in one line.
REPEAT_KEYS: dict[
    str, tuple[Callable[[dict[str, Any]], float], Callable[[dict[str, Any]], str]]
] = {
    "ingest": (
        lambda f: _post_c64(f)["rps"],
        lambda f: f"POST c=64 {fmt_load(_post_c64(f))}",
    ),
    "cost": (
        lambda f: f["total_cpu_ms_per_job"],
        lambda f: (
            f"{f['total_cpu_ms_per_job']:.2f} ms/job (speed "
            f"{'/'.join(str(x) for x in f.get('reference_cpu_ms') or [])})"
        ),
    ),
    "concurrency": (lambda f: f["ratio"], lambda f: f"{f['ratio']:.0%}"),
    "timing": (
        lambda f: f["lateness_p99_ms"] or 0.0,
        lambda f: f"p99 {f['lateness_p99_ms']} ms",
    ),
    "memory": (
        lambda f: f["worker_rss_max_mb"],
        lambda f: f"worker max {f['worker_rss_max_mb']:.0f} MB",
    ),
}


def median_run(phase: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run in the middle by the phase's key (the lower middle of an even count)."""
    key, _ = REPEAT_KEYS[phase]
    return sorted(runs, key=key)[(len(runs) - 1) // 2]


# --- the table ---------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def rows_for(store: str, figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    ingest = figures.get("ingest")
    if ingest:
        for kind in ("post", "get"):
            for run in ingest[kind]:
                c = run["concurrency"]
                name = "POST /generate-content" if kind == "post" else "GET /generate-content/:id"
                value = fmt_load(run)
                target, ok = "", None
                if kind == "post" and c == 64:
                    target = (
                        f">= {TARGET_INGEST_RPS:.0f} req/s, p99 <= {TARGET_INGEST_P99_MS:.0f} ms"
                    )
                    if store == "postgres":
                        ok = (
                            run["rps"] >= TARGET_INGEST_RPS
                            and (run["p99_ms"] or 1e9) <= TARGET_INGEST_P99_MS
                        )
                    else:
                        target += " (PostgreSQL)"
                rows.append((f"{name} c={c}", value, target, verdict(ok)))
    cost = figures.get("cost")
    if cost:
        rows.append(("jobs/s through one worker (0 ms LLM)", f"{cost['jobs_per_s']}", "", "n/a"))
        rows.append(
            (
                "API CPU per job: POST + event fan-out",
                f"{cost['api_cpu_ms_per_job_post']:.2f} + {cost['api_cpu_ms_per_job_events']:.2f}"
                f" = {cost['api_cpu_ms_per_job']:.2f} ms",
                "",
                "n/a",
            )
        )
        rows.append(("worker CPU per job", f"{cost['worker_cpu_ms_per_job']:.2f} ms", "", "n/a"))
        if cost.get("reference_cpu_ms"):
            before, after = cost["reference_cpu_ms"]
            speed = f"{before} / {after} ms CPU"
            if abs(after - before) > 0.15 * min(before, after):
                speed += " (changed during the phase: CPU figures not comparable)"
            rows.append(("machine speed: reference workload", speed, "", "n/a"))
        rows.append(
            (
                "CPU per job, API + worker",
                f"{cost['total_cpu_ms_per_job']:.2f} ms",
                f"<= {TARGET_CPU_MS:.0f} ms",
                verdict(cost["total_cpu_ms_per_job"] <= TARGET_CPU_MS and cost["finished"]),
            )
        )
    conc = figures.get("concurrency")
    if conc:
        rows.append(
            (
                f"concurrency {conc['worker_concurrency']}, {conc['llm_latency_ms']} ms LLM",
                f"{conc['jobs_per_s']} jobs/s of {conc['ideal_jobs_per_s']:.0f} "
                f"({conc['ratio']:.0%})",
                f">= {TARGET_CONCURRENCY:.0%} of ideal",
                verdict(conc["ratio"] >= TARGET_CONCURRENCY and conc["finished"]),
            )
        )
    timing = figures.get("timing")
    if timing:
        p99 = timing["lateness_p99_ms"]
        rows.append(
            (
                f"start lateness over {timing['measured']} jobs",
                f"p50 {timing['lateness_p50_ms']} ms, p99 {p99} ms, "
                f"max {timing['lateness_max_ms']} ms"
                + (f", {timing['started_early']} EARLY" if timing["started_early"] else ""),
                f"p99 <= {TARGET_LATENESS_P99_MS:.0f} ms",
                verdict(
                    p99 is not None
                    and p99 <= TARGET_LATENESS_P99_MS
                    and not timing["started_early"]
                    and timing["finished"]
                ),
            )
        )
    mem = figures.get("memory")
    if mem:
        rows.append(
            (
                f"worker RSS, {mem['llm_in_flight']} jobs in flight",
                f"{mem['worker_rss_in_flight_mb']:.0f} MB (idle {mem['worker_rss_idle_mb']:.0f},"
                f" max {mem['worker_rss_max_mb']:.0f})",
                f"<= {TARGET_WORKER_RSS_MB:.0f} MB with {mem['jobs']}",
                verdict(
                    mem["worker_rss_max_mb"] <= TARGET_WORKER_RSS_MB
                    and mem["llm_in_flight"] >= mem["jobs"]
                ),
            )
        )
    api_idle = (ingest or {}).get("api_rss_idle_mb") or (mem or {}).get("api_rss_idle_mb")
    api_load = max(
        (ingest or {}).get("api_rss_load_mb") or 0, (mem or {}).get("api_rss_load_mb") or 0
    )
    if api_idle:
        rows.append(
            ("API RSS idle / under load", f"{api_idle:.0f} MB / {api_load:.0f} MB", "", "n/a")
        )
    return rows


def render(rows: list[tuple[str, str, str, str]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = [
        " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def print_report(store: str, result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    size = "quick" if result["plan"]["quick"] else "full"
    print(f"== smartgen benchmark: store {store} ({size})")
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}, Linux {m['kernel']}, redis-server {m['redis']}"
    )
    print(f"store:   {result['store_description']}")
    plan = result["plan"]
    print(
        f"counts:  cost {plan['cost_jobs']} jobs, concurrency {plan['concurrency_jobs']} jobs, "
        f"timing {plan['timing_jobs']} jobs over {plan['timing_span_s']:g} s, memory "
        f"{plan['memory_jobs']} jobs in flight"
    )
    ingest = result["figures"].get("ingest")
    if ingest:
        print(
            f"ingest:  load from a separate process ({ingest['tool']}, 1 thread), "
            f"{ingest['seconds_per_run']:g} s per run, {ingest['users']} users; no worker "
            "running during ingest"
        )
    print(f"api:     API_WORKERS={result.get('api_workers', 1)}")
    print()
    print(render(rows_for(store, result["figures"]), ("figure", "value", "target", "result")))
    repeated = result.get("runs") or {}
    if repeated:
        print()
        print("repeated phases (the table shows the run in the middle):")
        for phase, runs in repeated.items():
            _, describe = REPEAT_KEYS[phase]
            print(f"  {phase}: " + "; ".join(describe(r) for r in runs))
    if store == "mongo":
        print()
        print(MONGO_NOTE)
    errors = result.get("errors") or {}
    for phase, message in errors.items():
        print(f"phase {phase} FAILED: {message}")
    for name, prof in (result.get("profiles") or {}).items():
        print()
        print(f"profile {name} ({prof['samples']} samples, {prof['file']}):")
        print("  by library (own time): " + ", ".join(f"{f} {p}%" for f, p in prof["by_library"]))
        print("  hottest functions (own time):")
        for frame, share in prof["own"][:8]:
            print(f"    {share:5.1f}%  {frame}")
        print("  smartgen calls (inclusive time):")
        for frame, share in prof["smartgen_inclusive"][:10]:
            print(f"    {share:5.1f}%  {frame}")
    print(f"JSON: {result.get('json_path', '')}")


def print_side_by_side(results: dict[str, dict[str, Any]]) -> None:
    stores = list(results)

    def get(store: str, *path: Any) -> Any:
        value: Any = results[store]["figures"]
        for key in path:
            if value is None:
                return None
            value = value[key] if isinstance(key, int) else value.get(key)
        return value

    def post(store: str, c_index: int) -> str:
        run = get(store, "ingest", "post", c_index)
        return f"{run['rps']:.0f}/s p99 {run['p99_ms']}" if run else "-"

    rows = [
        ("POST c=64 req/s, p99 ms", *[post(s, 2) for s in stores]),
        ("GET c=64 req/s", *[f"{get(s, 'ingest', 'get', 2, 'rps') or '-'}" for s in stores]),
        ("jobs/s, one worker", *[f"{get(s, 'cost', 'jobs_per_s') or '-'}" for s in stores]),
        (
            "CPU ms/job API+worker",
            *[f"{get(s, 'cost', 'total_cpu_ms_per_job') or '-'}" for s in stores],
        ),
        ("concurrency % of ideal", *[_pct(get(s, "concurrency", "ratio")) for s in stores]),
        ("lateness p99 ms", *[f"{get(s, 'timing', 'lateness_p99_ms') or '-'}" for s in stores]),
        (
            "worker RSS MB, 1000 in flight",
            *[f"{get(s, 'memory', 'worker_rss_max_mb') or '-'}" for s in stores],
        ),
    ]
    print()
    print("== side by side")
    print(render(rows, ("figure", *stores)))
    if "mongo" in stores:
        print(MONGO_NOTE)


# --- running -------------------------------------------------------------------------------------
async def run_store(
    store: str,
    plan: Plan,
    phases: list[str],
    cleanup: Cleanup,
    args: argparse.Namespace,
    stamp: str,
) -> dict[str, Any]:
    ws = Workspace(cleanup, keep=args.keep)
    log(f"store {store}: starting redis, the fake LLM and the store (workspace {ws.dir})")
    redis = Redis(ws)
    llm = FakeLLM(ws)
    backend = BACKENDS[store](ws)
    await asyncio.gather(redis.start(), llm.start(), backend.start())
    profile_prefix = None
    if args.profile:
        if not Profiler.available():
            raise SystemExit("--profile needs py-spy: .venv/bin/pip install py-spy")
        (BENCH / "results").mkdir(exist_ok=True)
        profile_prefix = BENCH / "results" / f"{stamp}-{store}-profile"
    src = Path(args.src) if args.src else None
    suite = Suite(
        backend,
        plan,
        ws,
        redis,
        llm,
        profile_prefix=profile_prefix,
        src=src,
        api_workers=args.api_workers,
        settings=dict(args.set),
    )
    result: dict[str, Any] = {
        "store": store,
        "smartgen_src": str(src) if src else "installed package",
        "api_workers": args.api_workers,
        "settings": dict(args.set),
        "store_description": await backend.describe(),
        "machine": machine(),
        "plan": asdict(plan),
        "started_at": datetime.now(UTC).isoformat(),
        "figures": {},
        "errors": {},
    }
    if backend.note:
        result["note"] = backend.note
    if args.repeat > 1:
        result["runs"] = {}
    for phase in phases:
        runs: list[dict[str, Any]] = []
        for attempt in range(1, args.repeat + 1):
            label = f" (run {attempt} of {args.repeat})" if args.repeat > 1 else ""
            if args.rest and (phase != phases[0] or attempt > 1):
                log(f"store {store}: resting {args.rest:g} s before phase {phase}")
                await asyncio.sleep(args.rest)
            log(f"store {store}: phase {phase}{label}: {await wait_idle()}")
            began = time.monotonic()
            try:
                runs.append(await getattr(suite, phase)())
            except (KeyboardInterrupt, asyncio.CancelledError):
                raise
            except Exception as exc:
                log(f"  phase {phase} failed: {type(exc).__name__}: {exc}")
                result["errors"][phase] = f"{type(exc).__name__}: {str(exc)[:2000]}"
                break
            log(f"  phase {phase} took {time.monotonic() - began:.0f} s")
        if runs and phase not in result["errors"]:
            result["figures"][phase] = median_run(phase, runs)
            if args.repeat > 1:
                result["runs"][phase] = runs
    result["finished_at"] = datetime.now(UTC).isoformat()
    if suite.profiles:
        result["profiles"] = suite.profiles
    return result


def write_json(result: dict[str, Any], store: str, stamp: str) -> Path:
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{stamp}-{store}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    plan = QUICK if args.quick else FULL
    stores = list(BACKENDS) if args.store == "all" else [args.store]
    phases = args.phases.split(",") if args.phases else list(PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict[str, Any]] = {}
    began = time.monotonic()
    for store in stores:
        store_plan = plan
        if store == "mongo":
            store_plan = MONGO_QUICK if args.quick else MONGO_FULL
        result = await run_store(store, store_plan, phases, cleanup, args, stamp)
        result["json_path"] = str(BENCH / "results" / f"{stamp}-{store}.json")
        write_json(result, store, stamp)
        results[store] = result
        print_report(store, result)
        sys.stdout.flush()
    if len(results) > 1:
        print_side_by_side(results)
    log(f"done in {time.monotonic() - began:.0f} s")
    return 1 if any(r["errors"] for r in results.values()) else 0


def _setting(text: str) -> tuple[str, str]:
    name, separator, value = text.partition("=")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip().upper(), value


def main() -> int:
    parser = argparse.ArgumentParser(description="smartgen benchmark suite")
    parser.add_argument("--store", choices=(*BACKENDS, "all"), default="postgres")
    parser.add_argument("--quick", action="store_true", help="smaller counts (~3 minutes)")
    parser.add_argument("--phases", help=f"comma-separated subset of {','.join(PHASES)}")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    parser.add_argument(
        "--api-workers",
        type=int,
        default=1,
        help="API_WORKERS for the API (processes behind one port; CPU and memory figures "
        "count them all)",
    )
    parser.add_argument(
        "--src",
        help="run the smartgen processes from this src/ directory (PYTHONPATH) instead of "
        "the installed package: for before/after comparisons of a change",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        type=_setting,
        metavar="NAME=VALUE",
        help="a smartgen setting for every process of the run (repeatable), e.g. "
        "--set WORKER_FETCH_NEXT=false to measure an optimisation against the stock path",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each phase N times and report the run in the middle (by the phase's "
        "headline figure), listing all: on a shared machine one run can mislead",
    )
    parser.add_argument(
        "--rest",
        type=float,
        default=0.0,
        help="seconds to leave the machine idle before each phase after the first: a VM "
        "that is slowed by its host after minutes of full load recovers (see README)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the API and the worker in the cost and concurrency phases (figures "
        "measured under a profiler are a little worse); prints the hot spots",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.rest < 0:
        parser.error("--rest must not be negative")
    if args.src:
        args.src = os.path.abspath(args.src)
        if not os.path.isdir(os.path.join(args.src, "smartgen")):
            parser.error(f"--src {args.src}: no smartgen package there")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
