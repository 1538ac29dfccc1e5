"""Crash recovery: how soon a SIGKILLed worker's jobs complete, and that a slow but live
worker is never robbed (issue 19).

    .venv/bin/python bench/recovery.py [--store sqlite|postgres|mongo] [--runs N]

Default settings throughout (WORKER_HEARTBEAT_SECONDS=1, WORKER_DEAD_AFTER_SECONDS=4,
LOCK_DURATION_MS=STALLED_INTERVAL_MS=30000) except GENERATION_DELAY_SECONDS=0. A real
`smartgen api`, a private redis-server, the store, and the fake model answering after
`--latency-ms` (3 s). Every prompt carries a marker `[m:<id>]`, so the fake model counts
the calls per job, the answers it could deliver, and the calls whose caller had gone.

Scenarios, each on a fresh database and queue:

- **peer**: two workers. Each run submits 2×`--jobs` jobs, waits until every one is in a
  model call, reads from the store which jobs the victim holds (their lease owner names
  its pid), waits `--kill-after` seconds into the call and SIGKILLs the victim; the other
  worker takes them over. The next run starts a fresh victim beside the survivor.
- **restart**: one worker holding `--jobs` jobs is SIGKILLed, and a new one is started
  `--restart-after` seconds later (as a supervisor would); it takes them over.
- **slow**: two live workers with a short lock (LOCK_DURATION_MS=2000,
  STALLED_INTERVAL_MS=1000) and a model call of `--slow-ms` (10 s: longer than the lock and
  than WORKER_DEAD_AFTER_SECONDS): every job must get exactly one model call.

Per run: seconds from the kill until the last job the victim held is `completed`
(target ≤ 10 s), the longest any of those jobs was shown `processing` (from its first
start; and from the kill), model calls repeated (target: at most the ones that died with
the victim) and jobs generated twice (answers delivered twice: target 0). After the last
run the script waits `--settle` seconds (65: the dead worker's bullmq lock, 30 s, and the
next stalled check, 30 s) so that bullmq's own redelivery of the dead worker's messages
happens inside the window and would show as a second model call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from harness import (
    BACKENDS,
    BENCH,
    Cleanup,
    FakeLLM,
    Probe,
    Proc,
    Redis,
    Smartgen,
    StoreBackend,
    User,
    Workspace,
    create_accounts,
    log,
    machine,
    mint_users,
    run_main,
    smartgen_env,
    wait_idle,
)

SCENARIOS = ("peer", "restart", "slow")
TARGET_RECOVERY_S = 10.0
JOBS_PER_USER = 20  # well under MAX_UNFINISHED_JOBS


@dataclass
class Run:
    scenario: str
    run: int
    submitted: int = 0
    held: int = 0  # jobs the victim held when it was killed
    held_by_others: int = 0
    killed_at: float = 0.0
    kill_after_start_s: float | None = None  # the victim's oldest job had run this long
    recovery_s: float | None = None  # kill → last held job completed
    rerun_s: float | None = None  # kill → last held job started again (detection + queueing)
    processing_max_s: float | None = None  # first start → completed, longest held job
    not_completed: list[str] = field(default_factory=list)
    # filled in after the settle window
    died: int = 0  # model calls of held jobs whose caller had gone
    repeated: int = 0  # model calls beyond the first, held jobs
    repeated_others: int = 0  # model calls beyond the first, jobs of live workers
    generated_twice: int = 0  # jobs whose answer was delivered more than once
    markers: dict[str, str] = field(default_factory=dict)  # marker -> job id
    held_markers: list[str] = field(default_factory=list)


class Recovery:
    def __init__(
        self, args: argparse.Namespace, backend: StoreBackend, ws: Workspace, redis: Redis
    ) -> None:
        self.args = args
        self.backend = backend
        self.ws = ws
        self.redis = redis
        self.jwt_secret = secrets.token_hex(32)
        self.users: list[User] = []
        # Users with an account in each scenario's database (the API refuses a token whose
        # user does not exist): database → user ids.
        self.accounts: dict[str, set[str]] = {}

    async def system(self, label: str, llm: FakeLLM) -> tuple[Smartgen, Probe, dict[str, str]]:
        store_env = await self.backend.database(label)
        env = smartgen_env(
            redis_url=self.redis.url,
            store_env=store_env,
            llm_base_url=llm.base_url,
            jwt_secret=self.jwt_secret,
            queue_prefix=f"rec{secrets.token_hex(3)}",
        )
        return Smartgen(self.ws, env), self.backend.probe(env), env

    async def submit(self, url: str, markers: list[str], env: dict[str, str]) -> dict[str, str]:
        """POST one job per marker (a few at a time); marker -> job id."""
        users = self.users
        need = -(-len(markers) // JOBS_PER_USER) * 4  # each run's jobs on fresh users
        if len(users) < need:
            users.extend(mint_users(self.jwt_secret, need - len(users)))
        database = env.get("MONGO_URI") or env.get("DATABASE_URL") or ""
        known = self.accounts.setdefault(database, set())
        if missing := [u for u in users if u.user_id not in known]:
            await create_accounts(env, missing)
            known.update(u.user_id for u in missing)
        out: dict[str, str] = {}
        semaphore = asyncio.Semaphore(16)

        async def one(session: aiohttp.ClientSession, i: int, marker: str) -> None:
            user = users[(i + secrets.randbelow(len(users))) % len(users)]
            body = {
                "prompt": f"Recovery job [m:{marker}]: how to repair a bicycle puncture",
                "contentType": "Blog Post Outline",
            }
            async with (
                semaphore,
                session.post(
                    url + "/generate-content", json=body, headers=user.headers
                ) as response,
            ):
                data = await response.json(content_type=None)
                if response.status != 202:
                    raise RuntimeError(f"POST /generate-content: HTTP {response.status}: {data}")
                out[marker] = data["jobId"]

        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(one(session, i, m) for i, m in enumerate(markers)))
        return out

    # --- crash scenarios ------------------------------------------------------------------
    async def crash(self, scenario: str) -> list[Run]:
        args = self.args
        llm = FakeLLM(self.ws, latency_ms=args.latency_ms)
        await llm.start()
        smartgen, probe, env = await self.system(scenario, llm)
        procs: list[Proc] = []
        try:
            api, url = await smartgen.api(f"api-{scenario}")
            procs.append(api)
            victim = await smartgen.worker(f"worker-{scenario}-1")
            procs.append(victim)
            if scenario == "peer":
                procs.append(await smartgen.worker(f"worker-{scenario}-survivor"))
            runs: list[Run] = []
            for number in range(1, args.runs + 1):
                run = Run(scenario, number)
                runs.append(run)
                per_run = args.jobs * (2 if scenario == "peer" else 1)
                markers = [f"{scenario}{number}-{i}" for i in range(per_run)]
                run.markers = await self.submit(url, markers, env)
                run.submitted = len(run.markers)
                await self._all_in_model(llm, probe, run)
                leases = await probe.leases()
                tag = f"-{victim.pid}-c"
                held = {
                    job_id
                    for job_id, owner in leases.items()
                    if owner
                    and tag in owner.rpartition("@")[2]
                    and job_id in set(run.markers.values())
                }
                run.held = len(held)
                run.held_by_others = run.submitted - run.held
                run.held_markers = [m for m, j in run.markers.items() if j in held]
                jobs = {j["job_id"]: j for j in await probe.jobs() if j["job_id"] in held}
                first_started = {j: jobs[j]["started_at"] for j in held}
                await asyncio.sleep(args.kill_after)
                run.killed_at = time.time()
                victim.kill()
                starts = [s.timestamp() for s in first_started.values() if s is not None]
                if starts:
                    run.kill_after_start_s = round(run.killed_at - min(starts), 2)
                log(
                    f"  {scenario} run {number}: killed worker {victim.pid} holding "
                    f"{run.held} of {run.submitted} jobs"
                )
                if scenario == "restart":
                    await asyncio.sleep(args.restart_after)
                    victim = await smartgen.worker(f"worker-{scenario}-{number + 1}", ready=False)
                    procs.append(victim)
                await self._wait_completed(probe, run, held, first_started)
                if scenario == "peer" and number < args.runs:
                    victim = await smartgen.worker(f"worker-{scenario}-{number + 1}")
                    procs.append(victim)
                elif scenario == "restart":
                    await victim.wait_for_output("worker ready", 60)
            if args.settle > 0:
                log(f"  {scenario}: waiting {args.settle:g} s for bullmq's own redelivery")
                await asyncio.sleep(args.settle)
            stats = await llm.stats(markers=True)
            for run in runs:
                self._count_calls(run, stats)
            counts = await probe.counts()
            log(f"  {scenario}: store {counts}")
            return runs
        finally:
            for proc in reversed(procs):
                await asyncio.to_thread(proc.stop)
            await probe.close()
            await asyncio.to_thread(llm.proc.stop)
            await self.backend.drop_database(env)

    async def _all_in_model(self, llm: FakeLLM, probe: Probe, run: Run) -> None:
        """Until every job of the run is `processing` and in a model call."""
        deadline = time.monotonic() + 60
        ids = set(run.markers.values())
        while time.monotonic() < deadline:
            stats = await llm.stats(markers=True)
            calls = stats.get("calls_by_marker", {})
            leases = await probe.leases()
            if all(calls.get(m, 0) >= 1 for m in run.markers) and ids <= set(leases):
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"run {run.run}: not every job reached the model within 60 s")

    async def _wait_completed(
        self, probe: Probe, run: Run, held: set[str], first_started: dict[str, Any]
    ) -> None:
        deadline = time.monotonic() + self.args.timeout
        final: dict[str, dict[str, Any]] = {}
        ids = set(run.markers.values())
        while time.monotonic() < deadline:
            jobs = {j["job_id"]: j for j in await probe.jobs() if j["job_id"] in ids}
            final = {k: j for k, j in jobs.items() if j["status"] in ("completed", "failed")}
            if len(final) == len(ids):
                break
            await asyncio.sleep(0.1)
        run.not_completed = sorted(
            j for j in ids if j not in final or final[j]["status"] != "completed"
        )
        done = [final[j] for j in held if j in final and final[j]["completed_at"] is not None]
        if not done:
            return
        ends = {j["job_id"]: j["completed_at"].timestamp() for j in done}
        restarts = [j["started_at"].timestamp() for j in done if j["started_at"] is not None]
        if restarts:
            run.rerun_s = round(max(restarts) - run.killed_at, 2)
        run.recovery_s = round(max(ends.values()) - run.killed_at, 2)
        spans = [
            ends[j] - first_started[j].timestamp() for j in ends if first_started.get(j) is not None
        ]
        run.processing_max_s = round(max(spans), 2) if spans else None
        log(
            f"  {scenario_name(run)}: every held job started again {run.rerun_s} s and "
            f"completed {run.recovery_s} s after the kill (longest shown processing "
            f"{run.processing_max_s} s)"
            + (f"; NOT completed: {len(run.not_completed)}" if run.not_completed else "")
        )

    @staticmethod
    def _count_calls(run: Run, stats: dict[str, Any]) -> None:
        calls = stats.get("calls_by_marker", {})
        aborted = stats.get("aborted_by_marker", {})
        ok = stats.get("ok_by_marker", {})
        held = set(run.held_markers)
        for marker in run.markers:
            extra = max(0, calls.get(marker, 0) - 1)
            if marker in held:
                run.repeated += extra
                run.died += aborted.get(marker, 0)
            else:
                run.repeated_others += extra
            if len(ok.get(marker, [])) > 1:
                run.generated_twice += 1

    # --- a slow but live worker -----------------------------------------------------------
    async def slow(self) -> dict[str, Any]:
        args = self.args
        llm = FakeLLM(self.ws, latency_ms=args.slow_ms)
        await llm.start()
        smartgen, probe, env = await self.system("slow", llm)
        short_lock: dict[str, Any] = {"LOCK_DURATION_MS": "2000", "STALLED_INTERVAL_MS": "1000"}
        procs: list[Proc] = []
        try:
            api, url = await smartgen.api("api-slow", **short_lock)
            procs.append(api)
            procs.append(await smartgen.worker("worker-slow-1", **short_lock))
            procs.append(await smartgen.worker("worker-slow-2", **short_lock))
            markers = [f"slow-{i}" for i in range(args.jobs * 2)]
            began = time.monotonic()
            ids = await self.submit(url, markers, env)
            deadline = time.monotonic() + args.slow_ms / 1000 * 3 + args.timeout
            jobs: list[dict[str, Any]] = []
            while time.monotonic() < deadline:
                jobs = [j for j in await probe.jobs() if j["job_id"] in set(ids.values())]
                if jobs and all(j["status"] in ("completed", "failed") for j in jobs):
                    break
                await asyncio.sleep(0.2)
            elapsed = time.monotonic() - began
            stats = await llm.stats(markers=True)
            calls = stats.get("calls_by_marker", {})
            ok = stats.get("ok_by_marker", {})
            per_job = sorted({calls.get(m, 0) for m in markers})
            spans = [
                (j["completed_at"] - j["started_at"]).total_seconds()
                for j in jobs
                if j["completed_at"] is not None and j["started_at"] is not None
            ]
            # A worker that took another's jobs says so in its log (queue/liveness.py).
            takeovers = sum(p.output().count("stopped beating") for p in procs[1:])
            figures = {
                "jobs": len(markers),
                "model_ms": args.slow_ms,
                "settings": short_lock,
                "completed": sum(1 for j in jobs if j["status"] == "completed"),
                "model_calls": sum(calls.get(m, 0) for m in markers),
                "calls_per_job": per_job,
                "generated_twice": sum(1 for m in markers if len(ok.get(m, [])) > 1),
                "attempts_max": max((int(j["attempts"] or 0) for j in jobs), default=0),
                "processing_s_min": round(min(spans), 2) if spans else None,
                "processing_s_max": round(max(spans), 2) if spans else None,
                "takeovers_logged": takeovers,
                "elapsed_s": round(elapsed, 1),
            }
            log(
                f"  slow: {figures['completed']}/{len(markers)} completed, "
                f"{figures['model_calls']} model calls, per job {per_job}"
            )
            return figures
        finally:
            for proc in reversed(procs):
                await asyncio.to_thread(proc.stop)
            await probe.close()
            await asyncio.to_thread(llm.proc.stop)
            await self.backend.drop_database(env)


def scenario_name(run: Run) -> str:
    return f"{run.scenario} run {run.run}"


# --- report ---------------------------------------------------------------------------------
def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    args = result["args"]
    print()
    print(f"== crash recovery ({result['store_description']})")
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}, kernel {m['kernel']}, redis-server {m['redis']}"
    )
    print(
        f"default settings (heartbeat 1 s, dead after 4 s, lock 30 s), model "
        f"{args['latency_ms']:g} ms, kill {args['kill_after']:g} s into the call, "
        f"{args['jobs']} jobs per victim, settle {args['settle']:g} s"
    )
    header = (
        "run", "held", "kill→rerun s", "kill→done s", "processing max s", "calls died", "repeated",
        "others repeated", "generated twice", "verdict",
    )  # fmt: skip
    rows: list[tuple[str, ...]] = []
    for run in result["runs"]:
        # A victim that held none of the run's jobs (the peer took them all) proves nothing.
        ok: bool | None = (
            None
            if run["held"] == 0
            else (
                run["recovery_s"] is not None
                and run["recovery_s"] <= TARGET_RECOVERY_S
                and run["repeated"] <= run["died"]
                and run["repeated_others"] == 0
                and run["generated_twice"] == 0
                and not run["not_completed"]
            )
        )
        rows.append(
            (
                f"{run['scenario']} {run['run']}",
                f"{run['held']}/{run['submitted']}",
                str(run["rerun_s"]),
                str(run["recovery_s"]),
                f"{run['processing_max_s']} ({run['kill_after_start_s']} before the kill)",
                str(run["died"]),
                str(run["repeated"]),
                str(run["repeated_others"]),
                str(run["generated_twice"]),
                verdict(ok),
            )
        )
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    by: dict[str, list[float]] = {}
    for run in result["runs"]:
        if run["recovery_s"] is not None:
            by.setdefault(run["scenario"], []).append(run["recovery_s"])
    for scenario, values in by.items():
        print(
            f"{scenario}: kill → every held job completed {min(values):.1f}–{max(values):.1f} s "
            f"over {len(values)} runs (target ≤ {TARGET_RECOVERY_S:g} s): "
            f"{verdict(max(values) <= TARGET_RECOVERY_S)}"
        )
    slow = result.get("slow")
    if slow:
        ok = (
            slow["calls_per_job"] == [1]
            and slow["completed"] == slow["jobs"]
            and slow["takeovers_logged"] == 0
        )
        print(
            f"slow but live: {slow['jobs']} jobs, model call {slow['model_ms'] / 1000:g} s, "
            f"LOCK_DURATION_MS=2000: {slow['completed']} completed, model calls per job "
            f"{slow['calls_per_job']}, generated twice {slow['generated_twice']}, "
            f"shown processing {slow['processing_s_min']}–{slow['processing_s_max']} s, "
            f"take-overs {slow['takeovers_logged']} "
            f"(target: 1 call per job): {verdict(ok)}"
        )
    print(f"json: {result['json_path']}")


# --- running --------------------------------------------------------------------------------
async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    ws = Workspace(cleanup, keep=args.keep)
    redis = Redis(ws)
    backend = BACKENDS[args.store](ws)
    await asyncio.gather(redis.start(), backend.start())
    bench = Recovery(args, backend, ws, redis)
    result: dict[str, Any] = {
        "store": args.store,
        "store_description": await backend.describe(),
        "machine": machine(),
        "args": {k: v for k, v in vars(args).items() if k != "keep"},
        "started_at": datetime.now(UTC).isoformat(),
        "runs": [],
    }
    scenarios = args.scenarios.split(",")
    for scenario in scenarios:
        log(f"scenario {scenario}: {await wait_idle(limit_s=10)}")
        if scenario == "slow":
            result["slow"] = await bench.slow()
        else:
            result["runs"].extend(asdict(r) for r in await bench.crash(scenario))
        await redis.flushall()
    for r in result["runs"]:
        r.pop("markers", None)
        r.pop("held_markers", None)
    result["finished_at"] = datetime.now(UTC).isoformat()
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{stamp}-recovery-{args.store}.json"
    result["json_path"] = str(path)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print_report(result)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="smartgen crash recovery (issue 19)")
    parser.add_argument("--store", choices=tuple(BACKENDS), default="sqlite")
    parser.add_argument("--runs", type=int, default=3, help="kills per crash scenario")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {SCENARIOS}"
    )
    parser.add_argument("--jobs", type=int, default=10, help="jobs in flight on the victim")
    parser.add_argument("--latency-ms", type=float, default=3000.0, help="the model's latency")
    parser.add_argument("--kill-after", type=float, default=1.0, help="seconds into the call")
    parser.add_argument("--restart-after", type=float, default=1.0)
    parser.add_argument("--slow-ms", type=float, default=10_000.0)
    parser.add_argument("--settle", type=float, default=65.0)
    parser.add_argument("--timeout", type=float, default=120.0, help="wait for final states")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    args = parser.parse_args()
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.runs < 1 or args.jobs < 1:
        parser.error("--runs and --jobs must be at least 1")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
