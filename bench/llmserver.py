"""A fast fake OpenAI-style LLM server for benchmarks and the soak (loopback only).

A raw asyncio HTTP/1.1 server (keep-alive, no pipelining needed) on uvloop, run as its own
process so that its CPU is not charged to the process under measurement:

    python bench/llmserver.py [--port 0] [--latency-ms 0]   # prints "PORT <n>" when ready

`POST …/chat/completions` answers a completion after the configured latency (fixed, or
uniform in [latency_ms, latency_max_ms]); a fraction of calls fail with 500 (retryable)
or 400 (not retryable). With `hold`, calls wait until `POST /_release`. A marker
`[m:<id>]` in the user's prompt is counted per successful answer, so a caller can check
that each job was generated exactly once. Control endpoints:

- `POST /_control` {latency_ms, latency_max_ms, fail_rate, hold}: change behaviour;
- `POST /_release`: wake every held call (and stop holding);
- `POST /_reset`: zero the counters;
- `GET /_stats` (`/_stats?markers=1` adds per marker: times of successful answers, failures,
  calls received and calls whose caller had gone when the answer was ready).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import sys
import time
from typing import Any

import orjson

MARKER = re.compile(r"\[m:([A-Za-z0-9_.:-]+)\]")
CONTENT = (
    "# {topic}: a practical guide\n\n"
    "## Introduction\n### Why it matters\n- The problem readers face\n- What they gain\n\n"
    "## The basics\n### Key terms\n- A first definition\n- A second definition\n"
    "### Common mistakes\n- Mistake one and how to avoid it\n- Mistake two\n\n"
    "## Step by step\n### Prepare\n- What you need\n### Do it\n- Step one\n- Step two\n"
    "- Step three\n### Check the result\n- Signs that it worked\n\n"
    "## Going further\n- Tools\n- Reading\n\n## Conclusion\n- Recap and a call to action\n"
)


class State:
    def __init__(self, latency_ms: float) -> None:
        self.latency_ms = latency_ms
        self.latency_max_ms = latency_ms
        self.fail_rate = 0.0
        self.hold = False
        self.release = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.ok = 0
        self.failed_500 = 0
        self.failed_400 = 0
        self.aborted = 0  # the client went away before the answer (e.g. a killed worker)
        self.in_flight = 0
        self.max_in_flight = 0
        self.ok_by_marker: dict[str, list[float]] = {}
        self.fail_by_marker: dict[str, list[int]] = {}
        self.calls_by_marker: dict[str, int] = {}  # calls received, answered or not
        self.aborted_by_marker: dict[str, int] = {}

    def stats(self, markers: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "calls": self.calls,
            "ok": self.ok,
            "failed_500": self.failed_500,
            "failed_400": self.failed_400,
            "aborted": self.aborted,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "config": {
                "latency_ms": self.latency_ms,
                "latency_max_ms": self.latency_max_ms,
                "fail_rate": self.fail_rate,
                "hold": self.hold,
            },
        }
        if markers:
            out["ok_by_marker"] = self.ok_by_marker
            out["fail_by_marker"] = self.fail_by_marker
            out["calls_by_marker"] = self.calls_by_marker
            out["aborted_by_marker"] = self.aborted_by_marker
        return out


def _response(status: int, body: bytes, reason: str = "") -> bytes:
    reasons = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error"}
    head = (
        f"HTTP/1.1 {status} {reason or reasons.get(status, 'Status')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _completion(prompt: str, model: str) -> bytes:
    topic = prompt[:80] or "Your topic"
    return orjson.dumps(
        {
            "id": "gen-bench",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT.format(topic=topic)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 120, "completion_tokens": 480, "total_tokens": 600},
        }
    )


class HttpProtocol(asyncio.Protocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # uvloop's transports are not asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip() or 0)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            method, _, rest = head[0].partition(b" ")
            path = rest.partition(b" ")[0].decode("latin-1")
            self.handle(method.decode("latin-1"), path, body)

    def send(self, payload: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(payload)
        return True

    def handle(self, method: str, path: str, body: bytes) -> None:
        state = self.state
        if path.endswith("/chat/completions") and method == "POST":
            self.chat(body)
        elif path.startswith("/_stats"):
            self.send(_response(200, orjson.dumps(state.stats("markers=1" in path))))
        elif path == "/_control" and method == "POST":
            conf = orjson.loads(body or b"{}")
            if "latency_ms" in conf:
                state.latency_ms = float(conf["latency_ms"])
                state.latency_max_ms = float(conf.get("latency_max_ms", conf["latency_ms"]))
            if "fail_rate" in conf:
                state.fail_rate = float(conf["fail_rate"])
            if "hold" in conf:
                state.hold = bool(conf["hold"])
                if state.hold:
                    state.release = asyncio.Event()
            self.send(_response(200, orjson.dumps(state.stats(False))))
        elif path == "/_release" and method == "POST":
            state.hold = False
            state.release.set()
            self.send(_response(200, b"{}"))
        elif path == "/_reset" and method == "POST":
            state.reset()
            self.send(_response(200, b"{}"))
        else:
            self.send(_response(404, b'{"error":{"message":"not found"}}'))

    def chat(self, body: bytes) -> None:
        state = self.state
        state.calls += 1
        try:
            request = orjson.loads(body)
            prompt = next(
                (m.get("content", "") for m in request["messages"] if m.get("role") == "user"),
                "",
            )
            model = str(request.get("model") or "fake/model")
        except (ValueError, KeyError, TypeError, AttributeError):
            self.send(_response(400, b'{"error":{"message":"bad request body"}}'))
            return
        found = MARKER.search(prompt)
        marker = found.group(1) if found else None
        if marker is not None:
            state.calls_by_marker[marker] = state.calls_by_marker.get(marker, 0) + 1
        status = 200
        if state.fail_rate and random.random() < state.fail_rate:
            status = 500 if random.random() < 0.5 else 400
        latency = state.latency_ms
        if state.latency_max_ms > latency:
            latency = random.uniform(latency, state.latency_max_ms)
        if latency <= 0 and not state.hold:
            self.answer(status, prompt, model, marker)
            return
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        asyncio.get_running_loop().create_task(
            self.later(latency / 1000, status, prompt, model, marker)
        )

    async def later(
        self, seconds: float, status: int, prompt: str, model: str, marker: str | None
    ) -> None:
        state = self.state
        try:
            if state.hold:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.release.wait(), 600)
            else:
                await asyncio.sleep(seconds)
            self.answer(status, prompt, model, marker)
        finally:
            state.in_flight -= 1

    def aborted(self, marker: str | None) -> None:
        self.state.aborted += 1
        if marker is not None:
            counts = self.state.aborted_by_marker
            counts[marker] = counts.get(marker, 0) + 1

    def answer(self, status: int, prompt: str, model: str, marker: str | None) -> None:
        state = self.state
        if status == 200:
            if not self.send(_response(200, _completion(prompt, model))):
                self.aborted(marker)
                return
            state.ok += 1
            if marker is not None:
                state.ok_by_marker.setdefault(marker, []).append(time.time())
            return
        message = "injected retryable failure" if status == 500 else "injected refusal"
        payload = orjson.dumps({"error": {"message": message, "code": status}})
        if not self.send(_response(status, payload)):
            self.aborted(marker)
            return
        if status == 500:
            state.failed_500 += 1
        else:
            state.failed_400 += 1
        if marker is not None:
            state.fail_by_marker.setdefault(marker, []).append(status)


async def serve(port: int, latency_ms: float) -> None:
    state = State(latency_ms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(state), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.port, args.latency_ms))
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, args.latency_ms))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
