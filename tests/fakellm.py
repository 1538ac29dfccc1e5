"""A real HTTP server on 127.0.0.1 that speaks OpenAI-style `/chat/completions`.

It runs in its own thread, so it answers even while a test blocks. Behaviour is
scripted per test by a marker that appears in the user's prompt:

    fake.script("[flaky]", [Reply(status=500), Reply(status=500)])  # then the default
    fake.always("[down]", Reply(status=503))

Prompts without a scripted marker get a deterministic Markdown answer.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    json_body: Any = None  # None: the default completion for the prompt
    raw_body: bytes | None = None  # sent as-is (malformed bodies)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (timeouts)
    content: str | None = None  # completion text instead of the default
    chunk_delay: float = 0.0  # streaming: seconds between chunks (a slow model)
    break_after: int | None = None  # streaming: drop the connection after this many chunks
    # Hostile modes. `encoding="gzip"`: the body is gzip-compressed and labelled so, whatever
    # the client accepted. `sse`: these raw pieces of an event stream, in order (chunked,
    # `chunk_delay` apart); `sse_forever`: this piece again and again until the client
    # hangs up (SSE comments that keep a stream alive).
    encoding: str | None = None
    sse: list[str] | None = None
    sse_forever: str | None = None
    cost: float | None = None  # the `usage.cost` the answer reports (None: no cost field)


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float
    # Streaming: when the client went away before the answer ended (its connection closed).
    aborted_at: float | None = None

    @property
    def user(self) -> str:
        """The whole user message."""
        for message in self.body.get("messages", []):
            if message.get("role") == "user":
                return str(message.get("content", ""))
        return ""

    @property
    def prompt(self) -> str:
        """The caller's prompt: what the user message holds inside <request> tags (all
        of it when there are none)."""
        user = self.user
        start, end = user.find("<request>\n"), user.find("\n</request>")
        if start >= 0 and end > start:
            return user[start + len("<request>\n") : end]
        return user

    @property
    def system(self) -> str:
        for message in self.body.get("messages", []):
            if message.get("role") == "system":
                return str(message.get("content", ""))
        return ""


def default_content(prompt: str) -> str:
    return (
        f"# Outline: {prompt}\n\n## Introduction\n\n### Why it matters\n- A point about {prompt}\n"
    )


def completion_body(content: str, model: str, cost: float | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"prompt_tokens": 12, "completion_tokens": 34, "total_tokens": 46}
    if cost is not None:
        usage["cost"] = cost
    return {
        "id": "gen-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


class FakeLLM:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Reply]] = {}
        self._always: dict[str, Reply] = {}
        self.default_delay = 0.0
        # GET /models: OpenRouter's price list (USD per token, as strings).
        self.prices: dict[str, dict[str, str]] = {
            "fake/model-1": {"prompt": "0.000001", "completion": "0.000002"},
            "fake/model-2": {"prompt": "0.000003", "completion": "0.000004"},
        }
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                call = Call(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, {}, time.time()
                )
                with fake._lock:
                    fake.calls.append(call)
                    prices = dict(fake.prices)
                if not self.path.endswith("/models"):
                    self._send(404, b'{"error":{"message":"not found"}}', {})
                    return
                data = [{"id": model, "pricing": price} for model, price in prices.items()]
                self._send(200, json.dumps({"data": data}).encode(), {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                call = Call(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
                with fake._lock:
                    fake.calls.append(call)
                if not self.path.endswith("/chat/completions"):
                    self._send(404, b'{"error":{"message":"not found"}}', {})
                    return
                reply = fake._next_reply(call.prompt)
                delay = reply.delay or fake.default_delay
                if delay:
                    time.sleep(delay)
                streamed = reply.raw_body is None and reply.json_body is None
                if reply.sse is not None or reply.sse_forever is not None:
                    self._raw_stream(reply, call)
                    return
                if body.get("stream") and reply.status == 200 and streamed:
                    self._stream(reply, call)
                    return
                if reply.raw_body is not None:
                    payload = reply.raw_body
                elif reply.json_body is not None:
                    payload = json.dumps(reply.json_body).encode()
                elif reply.status == 200:
                    content = (
                        reply.content if reply.content is not None else default_content(call.prompt)
                    )
                    payload = json.dumps(
                        completion_body(content, body.get("model", "fake"), reply.cost)
                    ).encode()
                else:
                    payload = json.dumps(
                        {
                            "error": {
                                "message": f"fake upstream error {reply.status}",
                                "code": reply.status,
                            }
                        }
                    ).encode()
                headers = dict(reply.headers)
                if reply.encoding == "gzip":
                    payload = gzip.compress(payload, compresslevel=9)
                    headers["Content-Encoding"] = "gzip"
                self._send(reply.status, payload, headers)

            def _raw_stream(self, reply: Reply, call: Call) -> None:
                """Raw event-stream pieces (hostile streams): a list, or one forever."""

                def send(text: str) -> None:
                    data = text.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    for piece in reply.sse or []:
                        send(piece)
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                    while reply.sse_forever is not None:
                        send(reply.sse_forever)
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                except OSError:  # the client hung up (what these tests expect)
                    call.aborted_at = time.time()
                    self.close_connection = True

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _stream(self, reply: Reply, call: Call) -> None:
                """Server-sent events in chunked transfer encoding, as providers send
                them: a stream that breaks midway ends without the last chunk."""
                content = (
                    reply.content if reply.content is not None else default_content(call.prompt)
                )

                def send(text: str) -> None:
                    data = text.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    send(": OPENROUTER PROCESSING\n\n")
                    words = content.split(" ")
                    for i, word in enumerate(words):
                        if reply.break_after is not None and i >= reply.break_after:
                            self.close_connection = True
                            return  # no terminating chunk: the answer is cut off
                        piece = word if i == 0 else " " + word
                        chunk = {
                            "model": call.body.get("model", "fake"),
                            "choices": [{"index": 0, "delta": {"content": piece}}],
                        }
                        send(f"data: {json.dumps(chunk)}\n\n")
                        if reply.chunk_delay:
                            time.sleep(reply.chunk_delay)
                    usage = {
                        "model": call.body.get("model", "fake"),
                        "choices": [],
                        "usage": completion_body("", "", reply.cost)["usage"],
                    }
                    send(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                    self.close_connection = True
                except (BrokenPipeError, ConnectionResetError):
                    call.aborted_at = time.time()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _next_reply(self, prompt: str) -> Reply:
        with self._lock:
            for marker, replies in self._scripts.items():
                if marker in prompt and replies:
                    return replies.pop(0)
            for marker, reply in self._always.items():
                if marker in prompt:
                    return reply
        return Reply()

    def script(self, marker: str, replies: list[Reply]) -> None:
        """Prompts containing `marker` get these replies in order, then the default."""
        with self._lock:
            self._scripts[marker] = list(replies)

    def always(self, marker: str, reply: Reply) -> None:
        with self._lock:
            self._always[marker] = reply

    def calls_for(self, marker: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if marker in c.prompt]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
