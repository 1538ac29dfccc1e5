"""Idle cost of `smartgen dev`: CPU of each process and the Redis commands it issues while
there is nothing to do (issue 19).

    .venv/bin/python bench/idle.py [--seconds 60] [--attribute-seconds 20]

Starts `python -m smartgen dev` in a temporary directory on its embedded defaults (an
SQLite file, a private redis-server with AOF: EMBEDDED_REDIS=private so that a Redis on
6379 is not borrowed, the offline writer, a generated JWT secret), no smartgen setting
inherited from the shell, on a free port. Once the API answers `/readyz` and the worker
says it is ready, it waits `--warmup` seconds, then measures over `--seconds`:

- CPU time (user + system, /proc) of each process: the `smartgen dev` supervisor, the API,
  the worker and redis-server, as % of one core, and in total (target ≤ 1 %);
- Redis commands per second by command (`INFO commandstats`, reset at the start): commands
  run inside scripts count too, so this is Redis's work, not round trips.

Then, for `--attribute-seconds`, it watches Redis with MONITOR (a separate window, so its
own cost is not in the CPU figures) and attributes each top-level command to the process
that owns the connection (its socket, found in /proc/net/tcp and /proc/<pid>/fd): what
each process does while idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    BENCH,
    PYTHON,
    Cleanup,
    Proc,
    Workspace,
    free_port,
    log,
    machine,
    run_main,
    smartgen_env,
    wait_healthy,
    wait_idle,
)

TARGET_CPU_PERCENT = 1.0


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            for child in children:
                out.append(int(child))
                out.extend(descendants(int(child)))
    return out


def role(pid: int) -> str:
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        text = [a.decode(errors="replace") for a in args if a]
        if text and "redis-server" in text[0]:
            return "redis-server"
        if "smartgen" in text:
            return (
                text[text.index("smartgen") + 1] if len(text) > text.index("smartgen") + 1 else "?"
            )
        return Path(text[0]).name if text else "?"
    return "?"


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        text = f.read()
        fields = text[text.rfind(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) / 1024
    return 0.0


def tcp_owners(redis_port: int, pids: dict[int, str]) -> dict[int, str]:
    """Local port of each loopback connection to Redis -> the role of the process that
    holds it (its socket inode among the process's file descriptors)."""
    inodes: dict[str, int] = {}  # socket inode -> local port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, inode = parts[1], parts[2], parts[9]
                if int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    inodes[inode] = int(local.rsplit(":", 1)[1], 16)
    owners: dict[int, str] = {}
    for pid, name in pids.items():
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    found = re.fullmatch(r"socket:\[(\d+)\]", target)
                    if found and found.group(1) in inodes:
                        owners[inodes[found.group(1)]] = name
    return owners


async def command_stats(url: str, *, reset: bool) -> dict[str, dict[str, float]]:
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
        if reset:
            await client.config_resetstat()
    finally:
        await client.aclose()
    return {
        name.removeprefix("cmdstat_"): {"calls": int(v["calls"]), "usec": float(v["usec"])}
        for name, v in stats.items()
        if isinstance(v, dict)
    }


async def attribute(url: str, port: int, pids: dict[int, str], seconds: float) -> dict[str, Any]:
    """MONITOR for `seconds`: top-level commands by process, and each script's calls per
    second with the commands one call runs (by caller and sha)."""
    from redis import asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    by_role: dict[str, dict[str, int]] = {}
    unknown_ports: set[int] = set()
    # MONITOR shows a script call, then the commands the script runs: each evalsha is
    # named by its caller and its sha, and what it ran is counted under that name.
    scripts: dict[str, dict[str, int]] = {}
    script_calls: dict[str, int] = {}
    current = ""
    try:
        async with client.monitor() as monitor:
            owners = tcp_owners(port, pids)
            deadline = time.monotonic() + seconds
            listener = monitor.listen().__aiter__()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(listener.__anext__(), left)
                except TimeoutError:
                    break
                words = str(item.get("command", "")).split(" ", 2)
                command = words[0].lower()
                if item.get("client_type") == "lua":
                    inner = scripts.setdefault(current, {})
                    inner[command] = inner.get(command, 0) + 1
                    continue
                else:
                    client_port = int(item.get("client_port") or 0)
                    who = owners.get(client_port, "")
                    if not who:
                        owners = tcp_owners(port, pids)  # a connection opened meanwhile
                        who = owners.get(client_port, "")
                    if not who:
                        unknown_ports.add(client_port)
                        who = "other"
                if command == "evalsha" and len(words) > 1:
                    current = f"{who} evalsha {words[1][:8]}"
                    script_calls[current] = script_calls.get(current, 0) + 1
                by_role.setdefault(who, {})
                by_role[who][command] = by_role[who].get(command, 0) + 1
    finally:
        await client.aclose()
    return {
        "seconds": seconds,
        "per_second": {
            who: {c: round(n / seconds, 2) for c, n in sorted(cmds.items(), key=lambda kv: -kv[1])}
            for who, cmds in sorted(by_role.items())
        },
        "scripts": {
            name: {
                "per_second": round(calls / seconds, 2),
                "runs": {
                    c: round(n / calls, 2)
                    for c, n in sorted(scripts.get(name, {}).items(), key=lambda kv: -kv[1])
                },
            }
            for name, calls in sorted(script_calls.items(), key=lambda kv: -kv[1])
        },
        "unattributed_client_ports": sorted(unknown_ports),
    }


async def run(args: argparse.Namespace, cleanup: Cleanup) -> int:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    ws = Workspace(cleanup, keep=args.keep)
    port = free_port()
    env = smartgen_env(
        redis_url="", store_env={}, llm_base_url="", jwt_secret="", queue_prefix="bull"
    )
    # `smartgen dev` on its own defaults: drop what smartgen_env sets for the suite.
    for name in (
        "REDIS_URL", "BASE_URL", "LLM_PROVIDER", "OPENROUTER_MODEL", "JWT_SECRET",
        "QUEUE_PREFIX", "GENERATION_DELAY_SECONDS", "GENERATE_RATE_LIMIT",
        "REGISTER_IP_RATE_LIMIT", "LOGIN_RATE_LIMIT", "LOGIN_IP_RATE_LIMIT",
    ):  # fmt: skip
        env.pop(name, None)
    env.update({"PORT": str(port), "EMBEDDED_REDIS": "private", "HOST": "127.0.0.1"})
    for setting in args.set:
        name, _, value = setting.partition("=")
        env[name.strip().upper()] = value
    cwd = ws.dir / f"dev-{secrets.token_hex(3)}"
    cwd.mkdir()
    dev = Proc(
        "dev", [PYTHON, "-m", "smartgen", "dev"], env=env, cwd=cwd, log_dir=ws.logs,
        cleanup=cleanup, stop_timeout=45,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    await wait_healthy(url, dev, within=90)
    await dev.wait_for_output("worker ready", 90)
    found = re.search(r"Redis\s+(redis://127\.0\.0\.1:(\d+)/0) \(embedded", dev.output())
    if not found:
        raise RuntimeError(f"no embedded Redis in the banner:\n{dev.output()[-2000:]}")
    redis_url, redis_port = found.group(1), int(found.group(2))
    pids = {dev.pid: "dev (supervisor)"}
    for pid in descendants(dev.pid):
        pids[pid] = role(pid)
    log(f"smartgen dev ready: {', '.join(f'{n} {p}' for p, n in pids.items())}")
    log(f"warm-up {args.warmup:g} s; {await wait_idle(limit_s=10)}")
    await asyncio.sleep(args.warmup)
    before = {pid: cpu_seconds(pid) for pid in pids}
    await command_stats(redis_url, reset=True)
    began = time.monotonic()
    await asyncio.sleep(args.seconds)
    elapsed = time.monotonic() - began
    after = {pid: cpu_seconds(pid) for pid in pids}
    stats = await command_stats(redis_url, reset=False)
    # the INFO call of this script itself is not the system's
    stats.pop("info", None)
    stats.pop("config|resetstat", None)
    processes: list[dict[str, Any]] = [
        {
            "process": name,
            "pid": pid,
            "cpu_percent": round(100 * (after[pid] - before[pid]) / elapsed, 3),
            "cpu_ms": round(1000 * (after[pid] - before[pid]), 1),
            "rss_mb": round(rss_mb(pid), 1),
        }
        for pid, name in pids.items()
    ]
    total = round(sum(p["cpu_percent"] for p in processes), 3)
    per_second = {
        name: round(v["calls"] / elapsed, 3)
        for name, v in sorted(stats.items(), key=lambda kv: -kv[1]["calls"])
    }
    log(f"attributing Redis commands to processes (MONITOR, {args.attribute_seconds:g} s)")
    attributed = (
        await attribute(redis_url, redis_port, pids, args.attribute_seconds)
        if args.attribute_seconds > 0
        else {}
    )
    result = {
        "machine": machine(),
        "seconds": round(elapsed, 1),
        "settings": env_settings(env),
        "processes": processes,
        "total_cpu_percent": total,
        "redis_commands_per_second": per_second,
        "redis_commands_total_per_second": round(sum(per_second.values()), 2),
        "by_process": attributed,
        "started_at": datetime.now(UTC).isoformat(),
    }
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    path = out_dir / f"{stamp}-idle.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print_report(result, path)
    await asyncio.to_thread(dev.stop)
    return 0


def env_settings(env: dict[str, str]) -> dict[str, str]:
    from harness import _setting_names

    names = _setting_names()
    return {k: v for k, v in env.items() if k.upper() in names}


def print_report(result: dict[str, Any], path: Path) -> None:
    m = result["machine"]
    print()
    print(f"== smartgen dev, idle for {result['seconds']:g} s")
    print(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}, kernel {m['kernel']}, redis-server {m['redis']}"
    )
    print(f"{'process':<18} {'CPU % of one core':>18} {'CPU ms':>8} {'RSS MB':>8}")
    for p in result["processes"]:
        print(
            f"{p['process']:<18} {p['cpu_percent']:>18.3f} {p['cpu_ms']:>8.1f} {p['rss_mb']:>8.1f}"
        )
    total = result["total_cpu_percent"]
    ok = "met" if total <= TARGET_CPU_PERCENT else "MISSED"
    print(f"{'total':<18} {total:>18.3f}   (target ≤ {TARGET_CPU_PERCENT:g} %: {ok})")
    calls = result["redis_commands_per_second"]
    print(
        f"Redis commands/s: {result['redis_commands_total_per_second']:g} ("
        + ", ".join(f"{c} {v:g}" for c, v in calls.items())
        + ")"
    )
    by = result.get("by_process") or {}
    for who, cmds in (by.get("per_second") or {}).items():
        print(f"  {who}: " + ", ".join(f"{c} {v:g}/s" for c, v in cmds.items()))
    for name, script in (by.get("scripts") or {}).items():
        runs = ", ".join(f"{c} {n:g}" for c, n in script["runs"].items())
        print(f"  {name}: {script['per_second']:g}/s, each running {runs}")
    print(f"json: {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description="idle cost of smartgen dev (issue 19)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the measured window")
    parser.add_argument("--warmup", type=float, default=10.0, help="idle seconds first")
    parser.add_argument(
        "--attribute-seconds",
        type=float,
        default=20.0,
        help="then MONITOR Redis this long to attribute commands to processes (0: skip)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="a smartgen setting for `smartgen dev` (repeatable)",
    )  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the workspace (logs)")
    args = parser.parse_args()
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    return run_main(lambda cleanup: run(args, cleanup))


if __name__ == "__main__":
    sys.exit(main())
