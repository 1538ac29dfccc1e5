"""An HTTP load generator: a fixed number of keep-alive connections (aiohttp, uvloop), for a
duration, a count, or at a paced rate; latency percentiles from every request.

Used in-process by the suite and the soak to submit jobs, and as a separate process
(`python bench/loadgen.py …`, one JSON line on stdout) for the ingest figures when `wrk`
is not installed:

    python bench/loadgen.py --base http://127.0.0.1:5000 --mode post --targets tokens.txt \
        --concurrency 64 --duration 10
    python bench/loadgen.py --base … --mode get --targets token-jobid-pairs.txt …
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

# (method, path, headers, body) for request number i
RequestFactory = Callable[[int], tuple[str, str, dict[str, str], bytes | None]]
ResponseHook = Callable[[int, int, bytes], None]


@dataclass
class LoadResult:
    concurrency: int
    requests: int = 0
    errors: int = 0  # connection errors and timeouts
    statuses: dict[int, int] = field(default_factory=dict)
    duration: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    def summary(self, ok_status: int) -> dict[str, Any]:
        ordered = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 2)

        ok = self.statuses.get(ok_status, 0)
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "ok": ok,
            "non_ok": self.requests - ok - self.errors,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "duration_s": round(self.duration, 3),
            "rps": round(ok / self.duration, 1) if self.duration else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(ordered[-1], 2) if ordered else None,
        }


async def run_load(
    base: str,
    make_request: RequestFactory,
    *,
    concurrency: int,
    duration: float | None = None,
    count: int | None = None,
    rate: float | None = None,
    on_response: ResponseHook | None = None,
    request_timeout: float = 30.0,
) -> LoadResult:
    """Send requests from `concurrency` connections until `duration` passes or `count`
    requests were sent; with `rate`, request i is not sent before start + i / rate."""
    if duration is None and count is None:
        raise ValueError("give a duration or a count")
    result = LoadResult(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    next_index = 0
    start = time.perf_counter()
    stop_at = start + duration if duration is not None else float("inf")

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while True:
            i = next_index
            if (count is not None and i >= count) or time.perf_counter() >= stop_at:
                return
            next_index += 1
            if rate:
                wait = start + i / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            method, path, headers, body = make_request(i)
            began = time.perf_counter()
            try:
                async with session.request(method, base + path, headers=headers, data=body) as r:
                    payload = await r.read()
                    status = r.status
            except (aiohttp.ClientError, OSError, TimeoutError):
                result.requests += 1
                result.errors += 1
                continue
            result.latencies_ms.append((time.perf_counter() - began) * 1000)
            result.requests += 1
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if on_response is not None:
                on_response(i, status, payload)

    client_timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.duration = time.perf_counter() - start
    return result


CONTENT_TYPES = ("Blog Post Outline", "Product Description", "Social Media Caption")


def post_factory(
    tokens: list[str], *, prompt: Callable[[int], str] | None = None
) -> RequestFactory:
    """`POST /generate-content` round-robin over the users' tokens."""
    headers = [{"Authorization": f"Bearer {t}", "Content-Type": "application/json"} for t in tokens]

    def make(i: int) -> tuple[str, str, dict[str, str], bytes | None]:
        text = prompt(i) if prompt else f"Benchmark prompt {i}: how to bake sourdough bread"
        body = json.dumps({"prompt": text, "contentType": CONTENT_TYPES[i % 3]}).encode()
        return "POST", "/generate-content", headers[i % len(headers)], body

    return make


def get_factory(pairs: list[tuple[str, str]]) -> RequestFactory:
    """`GET /generate-content/:jobId` round-robin over (token, jobId) pairs."""
    prepared = [({"Authorization": f"Bearer {t}"}, f"/generate-content/{j}") for t, j in pairs]

    def make(i: int) -> tuple[str, str, dict[str, str], bytes | None]:
        headers, path = prepared[i % len(prepared)]
        return "GET", path, headers, None

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description="HTTP load for smartgen (one JSON line out)")
    parser.add_argument("--base", required=True)
    parser.add_argument("--mode", choices=("post", "get"), required=True)
    parser.add_argument("--targets", required=True, help="tokens (post) or 'token jobId' (get)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--count", type=int, default=None)
    args = parser.parse_args()
    with open(args.targets) as f:
        lines = [line.split() for line in f if line.strip()]
    if args.mode == "post":
        factory = post_factory([parts[0] for parts in lines])
        ok = 202
    else:
        factory = get_factory([(parts[0], parts[1]) for parts in lines])
        ok = 200

    async def go() -> LoadResult:
        return await run_load(
            args.base,
            factory,
            concurrency=args.concurrency,
            duration=args.duration,
            count=args.count,
        )

    try:
        import uvloop

        result = uvloop.run(go())
    except ImportError:  # pragma: no cover
        result = asyncio.run(go())
    print(json.dumps(result.summary(ok)), flush=True)


if __name__ == "__main__":
    main()
