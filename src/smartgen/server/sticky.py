"""Several API processes on one port, with sticky Socket.IO sessions (`API_WORKERS` > 1).

One API process is one core. Socket.IO's long-polling transport needs every request of a
session to reach the process that holds the session, which is why a plain shared socket
(uvicorn's `--workers`, SO_REUSEPORT) breaks it. Here, as Node's `@socket.io/sticky` does:

* the parent process (`Dispatcher`) owns the listening socket. For each new connection it
  peeks at the first request's head without consuming it (`MSG_PEEK`) and hands the
  connection itself (its file descriptor, over a Unix socket pair) to a worker process: the
  owner of the Engine.IO session named by the request's `sid`, else the next in turn;
* each worker (`HandedServer`) serves the connections it is handed with uvicorn's own
  protocol, as if it had accepted them, and names its sessions `<index>.<random>`;
* a connection kept alive across sessions can still carry a later request for another
  worker's session (a proxy's pooled upstream connection, a browser reusing one): the
  worker forwards such a request to the owner over the owner's private Unix socket
  (`StickyForward`). A WebSocket always arrives on a new connection, so the dispatcher
  routes it directly and nothing is relayed frame by frame.

REST requests carry no session and go to whichever worker holds their connection; jobs,
events and rate limits already live in Redis and the store, shared by all processes.

One cohesive thing (the dispatcher, the handed-connection server and the forwarder only
make sense together), hence one module past 400 lines. It replaces the standard
deployments (N processes behind a proxy with sticky sessions, or SO_REUSEPORT with
websocket-only clients; `bench/deployments.py` measures all three) and uses uvicorn's
internals to serve a handed connection (`config.http_protocol_class`, `server_state`,
`lifespan.state`), so it is used only with API_WORKERS > 1; API_WORKERS=1 is plain
uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import engineio
import socketio
import uvicorn

from smartgen.config import Settings
from smartgen.metrics import exposition
from smartgen.server import heap
from smartgen.server.http import exit_quietly_after_a_graceful_stop, uvicorn_config
from smartgen.server.supervise import stop_children

log = logging.getLogger("smartgen.sticky")

WORKER_ENV = "SMARTGEN_STICKY_WORKER"  # "<index>:<channel fd>:<run dir>", set for children
SID_SEPARATOR = "."
PEEK_BYTES = 8192
HEAD_TIMEOUT_SECONDS = 10.0  # a connection that sends no request line in time is closed
HANDOFF_TIMEOUT_SECONDS = 5.0
FORWARD_READ_TIMEOUT_SECONDS = 120.0  # above Engine.IO's ping interval + timeout (25 + 20 s)
RESTART_DELAY_SECONDS = 1.0
EARLY_EXIT_SECONDS = 10.0  # a worker dying this soon after its start stops the whole API


# --- session ids ----------------------------------------------------------------------------
def sid_owner(sid: str) -> int | None:
    """The worker index a session id names (`<index>.<random>`), if any."""
    index, separator, _ = sid.partition(SID_SEPARATOR)
    return int(index) if separator and index.isdigit() and len(index) <= 3 else None


def owner_in_query(query: bytes) -> int | None:
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == b"sid":
            return sid_owner(unquote(value.decode("latin-1")))
    return None


def route_of(head: bytes) -> int | None:
    """The worker a request must reach, from its head: the owner of the Engine.IO session in
    its `sid` parameter; None for anything else (any worker will do)."""
    request_line = head.split(b"\r\n", 1)[0]
    parts = request_line.split(b" ")
    if len(parts) < 2:
        return None
    path, _, query = parts[1].partition(b"?")
    if not path.startswith(b"/socket.io"):
        return None
    return owner_in_query(query)


def sticky_sio_class(index: int) -> type[socketio.AsyncServer]:
    """A Socket.IO server whose Engine.IO session ids start with `<index>.`."""

    class PrefixedEngineIO(engineio.AsyncServer):  # type: ignore[misc]
        def generate_id(self) -> str:
            return f"{index}{SID_SEPARATOR}{super().generate_id()}"

    class StickySocketIO(socketio.AsyncServer):  # type: ignore[misc]
        def _engineio_server_class(self) -> type[engineio.AsyncServer]:
            return PrefixedEngineIO

    return StickySocketIO


# --- the parent: accept, peek, hand over ------------------------------------------------------
class Dispatcher:
    """Owns the port; starts `workers` API processes and hands each connection to one."""

    def __init__(self, settings: Settings, workers: int) -> None:
        self.settings = settings
        self.workers = workers
        self.run_dir = Path(tempfile.mkdtemp(prefix="smartgen-api-"))
        self.channels: list[socket.socket] = []
        self._child_ends: list[socket.socket] = []
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._started: list[float] = [0.0] * workers
        self._turn = itertools.cycle(range(workers))
        self._stopping = asyncio.Event()
        self.exit_code = 0
        # Every worker's metrics, added up by whichever answers a scrape (metrics/
        # exposition.py): a fresh directory of this API's own unless one is configured.
        self.metrics_dir = exposition.multiprocess_dir()
        if self.metrics_dir is None:
            self.metrics_dir = str(self.run_dir / "metrics")
            os.mkdir(self.metrics_dir)

    def _spawn(self, index: int) -> None:
        child_end = self._child_ends[index]
        env = {
            **os.environ,
            WORKER_ENV: f"{index}:{child_end.fileno()}:{self.run_dir}",
            exposition.MULTIPROC_ENV: str(self.metrics_dir),
        }
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "smartgen", "api"], env=env, pass_fds=(child_end.fileno(),)
        )
        self._started[index] = time.monotonic()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            listener = socket.create_server(
                (self.settings.host, self.settings.port), backlog=2048, reuse_port=False
            )
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", self.settings.host, self.settings.port, exc)
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return 1
        listener.setblocking(False)
        for _ in range(self.workers):
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            parent_end.setblocking(False)
            self.channels.append(parent_end)
            self._child_ends.append(child_end)
        for index in range(self.workers):
            self._spawn(index)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        log.info(
            "API on http://%s:%d: %d worker processes, Socket.IO sessions kept to their worker",
            self.settings.host,
            self.settings.port,
            self.workers,
        )
        accepting = asyncio.create_task(self._accept(listener))
        watching = asyncio.create_task(self._watch())
        await self._stopping.wait()
        accepting.cancel()
        watching.cancel()
        listener.close()
        await self._stop_children()
        for sock in (*self.channels, *self._child_ends):
            sock.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.exit_code

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        while True:
            conn, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self._route(conn))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async def _route(self, conn: socket.socket) -> None:
        try:
            head = await _peek_head(conn)
            if head is None:
                return  # closed, or no request line in time
            index = route_of(head)
            if index is None or index >= self.workers:
                index = next(self._turn)
            await _hand_over(self.channels[index], conn)
        except TimeoutError:
            log.warning("API worker %d took no connection in time; one was dropped", index)
        except OSError as exc:
            log.debug("connection dropped before hand-over: %s", exc)
        finally:
            conn.close()  # the worker holds its own descriptor now

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            for index, proc in enumerate(self.procs):
                if proc is None or proc.poll() is None:
                    continue
                code = proc.returncode
                exposition.forget_process(proc.pid, str(self.metrics_dir))
                # A worker that gave up by itself at start-up (a bad setting, a missing
                # database) would fail again: stop. A crash or a kill later: replace it.
                if code > 0 and time.monotonic() - self._started[index] < EARLY_EXIT_SECONDS:
                    log.error("API worker %d exited with code %s at start-up", index, code)
                    self.exit_code = code if code > 0 else 1
                    self._stopping.set()
                    return
                log.error("API worker %d exited with code %s; restarting it", index, code)
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                self._spawn(index)  # connections handed meanwhile wait in its channel

    async def _stop_children(self) -> None:
        await asyncio.to_thread(
            stop_children, self.procs, self.settings.shutdown_grace_seconds + 15
        )


async def _wait(register: Callable[..., Any], unregister: Callable[[int], Any], fd: int) -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    register(fd, ready)
    try:
        await future
    finally:
        unregister(fd)


async def _peek_head(conn: socket.socket) -> bytes | None:
    """The connection's first bytes up to the end of the request line, left unread; None if
    the peer closed or sent no request line in time."""
    loop = asyncio.get_running_loop()
    conn.setblocking(False)
    try:
        async with asyncio.timeout(HEAD_TIMEOUT_SECONDS):
            while True:
                await _wait(loop.add_reader, loop.remove_reader, conn.fileno())
                try:
                    head = conn.recv(PEEK_BYTES, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                if not head:
                    return None
                if b"\r\n" in head or len(head) >= PEEK_BYTES:
                    return head
                # Only part of the request line so far: wait for more to arrive.
                await asyncio.sleep(0.005)
    except TimeoutError:
        return None


async def _hand_over(channel: socket.socket, conn: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(HANDOFF_TIMEOUT_SECONDS):
        while True:
            try:
                socket.send_fds(channel, [b"c"], [conn.fileno()])
                return
            except BlockingIOError:
                await _wait(loop.add_writer, loop.remove_writer, channel.fileno())


def serve_workers(settings: Settings, workers: int) -> int:
    import uvloop

    return uvloop.run(Dispatcher(settings, workers).run())


# --- a worker: serve handed connections ----------------------------------------------------
class StickyWorker:
    """What a worker process knows of its place: its index and where its peers listen."""

    def __init__(self, index: int, channel_fd: int, run_dir: Path) -> None:
        self.index = index
        self.channel_fd = channel_fd
        self.run_dir = run_dir

    @classmethod
    def from_env(cls) -> StickyWorker | None:
        value = os.environ.get(WORKER_ENV)
        if not value:
            return None
        index, fd, run_dir = value.split(":", 2)
        return cls(int(index), int(fd), Path(run_dir))

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"api-{index}.sock"

    def private_listener(self) -> socket.socket:
        """The Unix socket peers forward this worker's sessions' requests to."""
        path = self.socket_path(self.index)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by a predecessor that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(256)
        return sock


class HandedServer(uvicorn.Server):
    """uvicorn serving the connections the dispatcher hands over (plus the private Unix
    socket), each with uvicorn's own HTTP protocol, as if it had accepted them."""

    def __init__(self, config: uvicorn.Config, worker: StickyWorker) -> None:
        super().__init__(config)
        self.worker = worker
        self._channel = socket.socket(fileno=worker.channel_fd)
        self._channel.setblocking(False)
        self._adopting: set[asyncio.Task[Any]] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.should_exit:
            return
        asyncio.get_running_loop().add_reader(self._channel.fileno(), self._receive)

    def _protocol(self) -> asyncio.Protocol:
        protocol: asyncio.Protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        return protocol

    def _receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(self._channel, 16, 16)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the dispatcher is gone: stop serving
                loop.remove_reader(self._channel.fileno())
                self.should_exit = True
                return
            for fd in fds:
                conn = socket.socket(fileno=fd)
                task = asyncio.ensure_future(loop.connect_accepted_socket(self._protocol, conn))
                self._adopting.add(task)
                task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task[Any]) -> None:
        self._adopting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("could not adopt a connection: %s", task.exception())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self._channel.fileno())
        await super().shutdown(sockets=sockets)


class StickyForward:
    """ASGI middleware of a worker: a Socket.IO request for another worker's session goes to
    that worker over its private Unix socket, and its answer comes back unchanged."""

    def __init__(self, app: Any, worker: StickyWorker) -> None:
        self.app = app
        self.worker = worker
        self._sessions: dict[int, Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_sessions(send))
            return
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("/socket.io"):
            owner = owner_in_query(scope.get("query_string", b""))
            if owner is not None and owner != self.worker.index:
                if scope["type"] == "http":
                    await self._forward(owner, scope, receive, send)
                else:  # never on a new connection; refuse, and the client reconnects
                    await receive()
                    await send({"type": "websocket.close", "code": 1013})
                return
        await self.app(scope, receive, send)

    def _closing_sessions(self, send: Any) -> Any:
        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                for session in self._sessions.values():
                    await session.close()
                self._sessions.clear()
            await send(message)

        return wrapped

    def _session(self, owner: int) -> Any:
        import aiohttp

        session = self._sessions.get(owner)
        if session is None or session.closed:
            session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.worker.socket_path(owner))),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=5, sock_read=FORWARD_READ_TIMEOUT_SECONDS
                ),
                auto_decompress=False,
            )
            self._sessions[owner] = session
        return session

    async def _forward(self, owner: int, scope: dict[str, Any], receive: Any, send: Any) -> None:
        import aiohttp

        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in scope["headers"]
            if k.lower() not in (b"connection", b"keep-alive", b"transfer-encoding")
        ]
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"http://worker-{owner}{scope['path']}" + (f"?{query}" if query else "")
        try:
            async with self._session(owner).request(
                scope["method"], url, data=b"".join(chunks), headers=headers
            ) as reply:
                body = await reply.read()
                status = reply.status
                reply_headers = [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in reply.headers.items()
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                         "content-length", "date", "server")
                ]  # fmt: skip
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("could not forward to API worker %d: %s", owner, exc)
            status, body = 400, b'{"code":1,"message":"Session ID unknown"}'
            reply_headers = [(b"content-type", b"application/json")]
        reply_headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": reply_headers})
        await send({"type": "http.response.body", "body": body})


def run_worker_api(settings: Settings, worker: StickyWorker) -> int:
    """One worker process of a multi-process API (see the module's docstring)."""
    from smartgen.api.app import create_app

    app = create_app(
        settings,
        init_store=False,
        on_started=heap.settle_heap,
        sio_class=sticky_sio_class(worker.index),
        wrap=lambda asgi: StickyForward(asgi, worker),
    )
    server = HandedServer(uvicorn_config(app, settings), worker)
    # The dispatcher stops its workers with SIGTERM; a Ctrl-C reaches the whole group.
    exit_quietly_after_a_graceful_stop()
    server.run(sockets=[worker.private_listener()])
    return 0 if server.started else 1
