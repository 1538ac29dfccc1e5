"""`smartgen generate | jobs | show | save`: a terminal client for a running smartgen API.

It speaks only the public API (HTTP + Socket.IO), as any other client would. The token
lives in the user's config dir, keyed by server URL; on first use against a server it
registers a local user and keeps that user's generated password beside the token, so a
refused (expired) token is replaced without asking. Events are at most once, so while it
waits for a job it also polls the job; the store's answer, never an event, ends the wait.

Output contract: results on stdout (rendered Markdown and tables, or with `--json` exactly
one JSON document), progress on stderr, and every failure as one `smartgen: …` line on
stderr with exit code 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import math
import os
import re
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import httpx

from smartgen import __version__

if TYPE_CHECKING:
    from rich.console import Console

CONTENT_TYPES = ("Blog Post Outline", "Product Description", "Social Media Caption")
STATUSES = ("queued", "processing", "completed", "failed")
FINAL = frozenset({"completed", "failed"})
JOB_EVENTS = ("job_status", "job_completed", "job_failed")
LOCAL_DOMAIN = "localhost.smartgen"
POLL_SECONDS = 2.0  # fallback poll while no Socket.IO connection is up
POLL_SECONDS_LIVE = 5.0  # while connected: events wake us, the poll only covers lost ones
UNREACHABLE_GRACE = 30.0  # how long a wait tolerates the server being unreachable
WAIT_MARGIN = 300.0  # default --timeout: the scheduled delay plus this


class ClientError(Exception):
    """A failure reported as one line on stderr."""

    def __init__(self, message: str, *, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.exit_code = exit_code
        self.status = status


class Unreachable(ClientError):
    """No connection to the server (as opposed to an answer we did not like)."""


# --- credentials --------------------------------------------------------------------------


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "smartgen" / "credentials.json"


class CredentialStore:
    """`{server_url: {email, token, password?, local?}}` in a file only its owner can read."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read {self.path} ({exc}): fix or delete it") from None
        if not isinstance(data, dict):
            raise ClientError(f"{self.path} is not a JSON object: fix or delete it")
        return data

    def get(self, url: str) -> dict[str, Any]:
        entry = self._load().get(url)
        return dict(entry) if isinstance(entry, dict) else {}

    def put(self, url: str, entry: dict[str, Any]) -> None:
        data = self._load()
        data[url] = entry
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
                f.write("\n")
            os.chmod(tmp, 0o600)  # O_CREAT's mode does not apply to an existing file
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise ClientError(f"cannot write {self.path}: {exc}") from None


def _local_email(suffix: str = "") -> str:
    try:
        name = getpass.getuser()
    except Exception:  # no login name in the environment or the password database
        name = ""
    name = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip(".-") or "user"
    return f"{name}{suffix}@{LOCAL_DOMAIN}"


def job_path(job_id: str, *rest: str) -> str:
    """`/generate-content/<id>[/…]`, the id escaped (it comes from the command line)."""
    if job_id.strip(".") == "":  # "." and ".." would be resolved away by the URL
        raise ClientError(f"job {job_id} not found", status=404)
    return "/".join(("/generate-content", quote(str(job_id), safe=""), *rest))


# --- HTTP ---------------------------------------------------------------------------------


class Api:
    """The smartgen HTTP API with a bearer token that renews itself once when refused."""

    def __init__(
        self,
        url: str,
        *,
        creds: CredentialStore,
        email: str | None = None,
        password: str | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.url = url
        self.creds = creds
        self.email = email.strip().lower() if email else None
        self.password = password
        self.token: str | None = None
        self._notice = notice or (lambda _msg: None)
        self.http = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(30.0, connect=5.0),
            headers={"User-Agent": f"smartgen-terminal/{__version__}"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _send(
        self, method: str, path: str, *, body: Any = None, params: Any = None, token: str | None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            return await self.http.request(method, path, json=body, params=params, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout):
            raise Unreachable(
                f"cannot reach smartgen at {self.url}: is it running? start it with `make run`"
            ) from None
        except httpx.TimeoutException:
            raise ClientError(f"smartgen at {self.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise Unreachable(
                f"request to {self.url} failed: {exc or type(exc).__name__}"
            ) from None

    def _result(self, r: httpx.Response) -> Any:
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.is_success:
            if data is None:
                raise ClientError(
                    f"unexpected answer from {self.url} (HTTP {r.status_code}, not JSON):"
                    " is it a smartgen server?"
                )
            return data
        message = data.get("message") if isinstance(data, dict) else None
        message = str(message or r.reason_phrase or "error")
        if r.status_code == 401:
            message = f"authentication refused by {self.url}: {message}"
        elif r.status_code >= 500:
            message = f"smartgen at {self.url} failed (HTTP {r.status_code}): {message}"
        raise ClientError(message, status=r.status_code)

    async def call(self, method: str, path: str, *, body: Any = None, params: Any = None) -> Any:
        token = await self.ensure_token()
        r = await self._send(method, path, body=body, params=params, token=token)
        if r.status_code == 401:
            token = await self.ensure_token(refused=token)
            r = await self._send(method, path, body=body, params=params, token=token)
        return self._result(r)

    async def _auth(self, path: str, email: str, password: str) -> Any:
        r = await self._send("POST", path, body={"email": email, "password": password}, token=None)
        return self._result(r)

    async def ensure_token(self, refused: str | None = None) -> str:
        """A token for this server: the stored one, else log in, else register a local user."""
        if self.token and self.token != refused:
            return self.token
        entry = self.creds.get(self.url)
        email = self.email or entry.get("email")
        same_user = bool(email) and email == entry.get("email")
        stored_token = entry.get("token") if same_user else None
        password_matches = self.password is None or self.password == entry.get("password")
        if stored_token and stored_token != refused and password_matches:
            self.token = str(stored_token)
            return self.token
        password = self.password or (entry.get("password") if same_user else None)
        if email and not password:
            if self.email is None:
                raise ClientError(
                    f"the stored token for {email} was refused by {self.url}:"
                    f" log in again with --email {email} --password …"
                )
            if not sys.stdin.isatty():
                raise ClientError("--password is required with --email", exit_code=2)
            password = getpass.getpass(f"password for {email} at {self.url}: ")
        if email and password:
            body = await self._login(email, str(password), local=same_user and entry.get("local"))
            new = {"email": email, "token": body["token"]}
            if same_user and entry.get("local") and password == entry.get("password"):
                new.update(password=password, local=True)  # only our own generated password
        else:
            body, new = await self._register_local()
        self.creds.put(self.url, new)
        self.token = str(body["token"])
        return self.token

    async def _login(self, email: str, password: str, *, local: Any) -> Any:
        try:
            return await self._auth("/auth/login", email, password)
        except ClientError as exc:
            if exc.status != 401 or not local:
                raise
        # A local user the server no longer knows (e.g. a fresh embedded database): recreate it.
        try:
            return await self._auth("/auth/register", email, password)
        except ClientError as exc:
            raise ClientError(
                f"authentication refused by {self.url} for {email}: {exc.message}"
            ) from None

    async def _register_local(self) -> tuple[Any, dict[str, Any]]:
        password = secrets.token_urlsafe(24)
        for suffix in ("", f"-{secrets.token_hex(3)}", f"-{secrets.token_hex(6)}"):
            email = _local_email(suffix)
            try:
                body = await self._auth("/auth/register", email, password)
            except ClientError as exc:
                if exc.status == 409:  # taken (another config dir registered it)
                    continue
                raise
            self._notice(f"registered local user {email} (credentials in {self.creds.path})")
            return body, {
                "email": email,
                "token": body["token"],
                "password": password,
                "local": True,
            }
        raise ClientError(f"could not register a local user at {self.url}")

    async def job(self, job_id: str) -> dict[str, Any]:
        try:
            job: dict[str, Any] = await self.call("GET", job_path(job_id))
        except ClientError as exc:
            if exc.status == 404:
                raise ClientError(f"job {job_id} not found", status=404) from None
            raise
        return job


# --- output -------------------------------------------------------------------------------


@dataclass
class Session:
    """What a command needs, and what an interrupt handler may want to mention."""

    api: Api
    json: bool
    job_id: str | None = None
    _out: Console | None = field(default=None, repr=False)
    _err: Console | None = field(default=None, repr=False)

    @property
    def out(self) -> Console:
        if self._out is None:
            from rich.console import Console

            self._out = Console(highlight=False)
        return self._out

    @property
    def err(self) -> Console:
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, highlight=False)
        return self._err

    def emit_json(self, document: Any) -> None:
        sys.stdout.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()


def _when(value: Any, *, short: bool = False) -> str:
    if not isinstance(value, str) or not value:
        return "-"
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return moment.astimezone().strftime("%m-%d %H:%M" if short else "%Y-%m-%d %H:%M:%S")


def _excerpt(text: Any, width: int = 60) -> str:
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


STATUS_STYLE = {"queued": "cyan", "processing": "yellow", "completed": "green", "failed": "red"}


def render_job(session: Session, job: dict[str, Any]) -> None:
    from rich.markdown import Markdown
    from rich.rule import Rule
    from rich.text import Text

    status = str(job.get("status", "?"))
    head = Text()
    head.append(str(job.get("contentType", "")), style="bold")
    head.append(" · ")
    head.append(status, style=STATUS_STYLE.get(status, ""))
    if job.get("model"):
        head.append(f" · {job['model']}", style="dim")
    out = session.out
    out.print(head)
    out.print(Text(f"Prompt: {_excerpt(job.get('prompt'), 200)}"))
    times = f"Job {job.get('jobId')} · created {_when(job.get('createdAt'))}"
    if status == "completed":
        times += f" · completed {_when(job.get('completedAt'))}"
    elif status == "failed":
        times += f" · failed {_when(job.get('failedAt'))}"
    else:
        times += f" · scheduled for {_when(job.get('scheduledFor'))}"
    out.print(Text(times, style="dim"))
    out.print(Rule(style="dim"))
    if status == "completed":
        out.print(Markdown(str(job.get("generatedContent") or "")))
    elif status == "failed":
        out.print(Text(f"Failed: {job.get('error') or 'unknown error'}", style="red"))
    else:
        out.print(Text(f"Not finished yet ({status}): run `smartgen show {job.get('jobId')}`"))


class Progress:
    """A countdown bar until `scheduledFor`, then a spinner while processing (stderr).

    Not a terminal: one plain line per state instead; `--json`: nothing."""

    def __init__(self, session: Session, *, job_id: str, delay: float, enabled: bool) -> None:
        self.session = session
        self.job_id = job_id
        self.delay = delay
        self.enabled = enabled
        self.live: Any = None
        self._shown: str | None = None
        if enabled and session.err.is_terminal:
            from rich.progress import BarColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as RichProgress

            self.live = RichProgress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                console=session.err,
                transient=True,
            )
            self.countdown = self.live.add_task(
                f"queued · starts in {math.ceil(delay)}s", total=max(delay, 0.001)
            )
            self.working = self.live.add_task("processing", total=None, visible=False)
            self.live.start()

    def update(self, status: str, *, now: float, due: float, started: float) -> None:
        if not self.enabled:
            return
        remaining = due - now
        if status == "queued" and remaining > 0:
            phase, text = "countdown", f"queued · starts in {math.ceil(remaining)}s"
        elif status == "queued":
            phase, text = "late", "queued · waiting for a worker"
        else:
            phase, text = status, f"{status} · {math.floor(now - max(due, started))}s"
        if self.live is None:  # not a terminal: one line per phase
            if phase != self._shown:
                self._shown = phase
                self.session.err.print(_text(f"job {self.job_id}: {text}"))
            return
        if status == "queued" and remaining > 0:
            self.live.update(self.countdown, description=text, completed=self.delay - remaining)
        else:
            self.live.update(self.countdown, visible=False)
            self.live.update(self.working, description=text, visible=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _text(text: str) -> Any:
    from rich.text import Text

    return Text(text)


# --- waiting for a job --------------------------------------------------------------------


def _quiet_logger() -> logging.Logger:
    logger = logging.getLogger("smartgen.terminal.socketio")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
        logger.setLevel(logging.CRITICAL)
    return logger


async def _listen(api: Api, job_id: str, state: dict[str, str], wake: asyncio.Event) -> Any:
    """A Socket.IO connection whose job events for `job_id` wake the waiter; None when the
    server's Socket.IO cannot be reached (polling alone still finishes the wait)."""
    import socketio

    sio = socketio.AsyncClient(
        reconnection=True,
        reconnection_delay=1,
        reconnection_delay_max=5,
        logger=_quiet_logger(),
        engineio_logger=_quiet_logger(),
        handle_sigint=False,
    )

    async def on_event(data: Any = None) -> None:
        if isinstance(data, dict) and data.get("jobId") == job_id:
            if data.get("status") in STATUSES:
                state["status"] = str(data["status"])
            wake.set()

    async def on_connect() -> None:
        wake.set()  # (re)connected: events may have been missed, read the job again

    for name in JOB_EVENTS:
        sio.on(name, on_event)
    sio.on("connect", on_connect)
    try:
        await sio.connect(
            api.url,
            auth={"token": await api.ensure_token()},
            transports=["websocket"],
            wait_timeout=5,
        )
    except Exception:  # refused, not a Socket.IO server, network: poll instead
        await _close_socket(sio)
        return None
    return sio


async def _close_socket(sio: Any) -> None:
    if sio is None:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sio.disconnect(), 5)
    http = getattr(getattr(sio, "eio", None), "http", None)
    if http is not None and not http.closed:  # engine.io keeps an aiohttp session open
        with contextlib.suppress(Exception):
            await http.close()


async def wait_for_job(
    session: Session,
    queued: dict[str, Any],
    *,
    max_wait: float,
) -> dict[str, Any]:
    """Wait until the job is completed or failed, by events and by polling; at most
    `max_wait` seconds."""
    api = session.api
    job_id = str(queued["jobId"])
    delay = float(queued.get("delaySeconds") or 0)
    started = time.monotonic()
    due, deadline = started + delay, started + max_wait
    state = {"status": str(queued.get("status", "queued"))}
    wake = asyncio.Event()
    progress = Progress(session, job_id=job_id, delay=delay, enabled=not session.json)
    sio = None
    try:
        sio = await _listen(api, job_id, state, wake)
        next_poll = 0.0  # read the job once the listener is up: nothing is missed before it
        unreachable_since: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_poll or wake.is_set():
                wake.clear()
                try:
                    job = await api.job(job_id)
                except Unreachable:
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > UNREACHABLE_GRACE:
                        raise
                else:
                    unreachable_since = None
                    state["status"] = str(job.get("status"))
                    if state["status"] in FINAL:
                        return job
                live = sio is not None and sio.connected
                next_poll = time.monotonic() + (POLL_SECONDS_LIVE if live else POLL_SECONDS)
            now = time.monotonic()
            if now >= deadline:
                raise ClientError(
                    f"job {job_id} did not finish within {max_wait:g}s (still {state['status']}):"
                    f" check later with `smartgen show {job_id}`"
                )
            progress.update(state["status"], now=now, due=due, started=started)
            pause = max(0.0, min(0.25, next_poll - now, deadline - now))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
    finally:
        progress.stop()
        await _close_socket(sio)


# --- commands -----------------------------------------------------------------------------


async def cmd_generate(session: Session, args: argparse.Namespace) -> int:
    save = bool(args.save or args.title)
    if args.no_wait and save:
        raise ClientError("--save needs the result: drop --no-wait", exit_code=2)
    queued = await session.api.call(
        "POST", "/generate-content", body={"prompt": args.prompt, "contentType": args.type}
    )
    session.job_id = str(queued["jobId"])
    if args.no_wait:
        if session.json:
            session.emit_json(queued)
        else:
            session.out.print(
                _text(
                    f"Queued job {queued['jobId']}, scheduled for {_when(queued['scheduledFor'])}."
                    f" Follow it with `smartgen show {queued['jobId']}`."
                )
            )
        return 0
    delay = float(queued.get("delaySeconds") or 0)
    timeout = args.timeout if args.timeout is not None else delay + WAIT_MARGIN
    job = await wait_for_job(session, queued, max_wait=timeout)
    if job["status"] == "failed":
        if session.json:
            session.emit_json(job)
        raise ClientError(f"job {job['jobId']} failed: {job.get('error') or 'unknown error'}")
    saved = None
    if save:
        saved = await session.api.call(
            "POST",
            job_path(job["jobId"], "save"),
            body={"title": args.title} if args.title else None,
        )
    if session.json:
        session.emit_json({**job, "saved": saved} if saved is not None else job)
        return 0
    render_job(session, job)
    if saved is not None:
        session.out.print(_text(f'Saved as "{saved["title"]}" (content {saved["contentId"]})'))
    return 0


async def cmd_jobs(session: Session, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.limit:
        params["limit"] = args.limit
    if args.status:
        params["status"] = args.status
    jobs = await session.api.call("GET", "/generate-content", params=params)
    if session.json:
        session.emit_json(jobs)
        return 0
    if not jobs:
        hint = "no jobs match" if args.status else 'no jobs yet: try `smartgen generate "…"`'
        session.out.print(_text(hint))
        return 0
    from rich.table import Table
    from rich.text import Text

    # The id stays whole (it is what `show` takes); the type goes first on a narrow
    # terminal, and the prompt takes what is left.
    with_type = session.out.width >= 110
    fixed = 36 + 2 + 10 + 2 + 11 + 2 + (20 + 2 if with_type else 0)
    table = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("ID", "Type", "Status", "Created", "Prompt"):
        if name != "Type" or with_type:
            table.add_column(name, no_wrap=True)
    for job in jobs:
        status = str(job.get("status"))
        row = [
            Text(str(job.get("jobId"))),
            Text(str(job.get("contentType"))),
            Text(status, style=STATUS_STYLE.get(status, "")),
            Text(_when(job.get("createdAt"), short=True)),
            Text(_excerpt(job.get("prompt"), max(12, session.out.width - fixed))),
        ]
        table.add_row(*(row if with_type else row[:1] + row[2:]))
    session.out.print(table)
    return 0


async def cmd_show(session: Session, args: argparse.Namespace) -> int:
    job = await session.api.job(args.job_id)
    if session.json:
        session.emit_json(job)
    else:
        render_job(session, job)
    return 0


async def cmd_save(session: Session, args: argparse.Namespace) -> int:
    await session.api.job(args.job_id)  # a clear "not found" before the save's own errors
    saved = await session.api.call(
        "POST",
        job_path(args.job_id, "save"),
        body={"title": args.title} if args.title else None,
    )
    if session.json:
        session.emit_json(saved)
    else:
        session.out.print(_text(f'Saved as "{saved["title"]}" (content {saved["contentId"]})'))
    return 0


COMMANDS = {"generate": cmd_generate, "jobs": cmd_jobs, "show": cmd_show, "save": cmd_save}


# --- wiring -------------------------------------------------------------------------------


def resolve_url(given: str | None) -> str:
    url = (given or os.environ.get("SMARTGEN_URL") or "").strip()
    if not url:
        url = f"http://127.0.0.1:{os.environ.get('PORT') or 5000}"
    if "://" not in url:
        url = f"http://{url}"
    url = url.rstrip("/")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        valid = False
    if not valid:
        raise ClientError(f"invalid URL {url!r}: expected http://HOST:PORT", exit_code=2)
    return url


def _content_type(value: str) -> str:
    """Accept any case and the first word ("blog", "product", "social")."""
    wanted = " ".join(value.split()).lower()
    for name in CONTENT_TYPES:
        if wanted in (name.lower(), name.split()[0].lower()):
            return name
    return value


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
        return value

    return parse


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `generate`, `jobs`, `show` and `save` on the CLI's subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("server and account")
    group.add_argument(
        "--url",
        help="the smartgen API (default: $SMARTGEN_URL, else http://127.0.0.1:$PORT or :5000)",
    )
    group.add_argument(
        "--json", action="store_true", help="print one JSON document on stdout (for scripts)"
    )
    group.add_argument("--email", help="log in as this user (default: the stored or local user)")
    group.add_argument("--password", help="password for --email (asked for on a terminal)")

    gen = sub.add_parser(
        "generate",
        parents=[common],
        help="queue a generation, follow it live and print the result",
        description="Queue a generation, show a countdown and a spinner until it finishes, "
        "and print the content as Markdown.",
    )
    gen.add_argument("prompt", help='what to write about, e.g. "How to bake a sourdough bread"')
    gen.add_argument(
        "-t",
        "--type",
        type=_content_type,
        choices=CONTENT_TYPES,
        default=CONTENT_TYPES[0],
        metavar="TYPE",
        help=f"one of {', '.join(repr(c) for c in CONTENT_TYPES)} (default: %(default)r)",
    )
    gen.add_argument("--save", action="store_true", help="save the result as permanent content")
    gen.add_argument("--title", help="title of the saved content (implies --save)")
    gen.add_argument("--no-wait", action="store_true", help="queue the job and return at once")
    gen.add_argument(
        "--timeout",
        type=_positive(float),
        metavar="SECONDS",
        help=f"give up waiting after this long (default: the delay + {WAIT_MARGIN:g}s)",
    )
    gen.set_defaults(client_command="generate")

    jobs = sub.add_parser("jobs", parents=[common], help="list your recent jobs")
    jobs.add_argument("--limit", type=_positive(int), metavar="N", help="at most N (default 50)")
    jobs.add_argument("--status", choices=STATUSES, help="only jobs in this state")
    jobs.set_defaults(client_command="jobs")

    show = sub.add_parser("show", parents=[common], help="print one job and its content")
    show.add_argument("job_id", metavar="JOB_ID")
    show.set_defaults(client_command="show")

    save = sub.add_parser("save", parents=[common], help="save a completed job's content")
    save.add_argument("job_id", metavar="JOB_ID")
    save.add_argument("--title", help="title (default: the content's first heading)")
    save.set_defaults(client_command="save")


async def _run(session: Session, command: str, args: argparse.Namespace) -> int:
    try:
        return await COMMANDS[command](session, args)
    finally:
        await session.api.aclose()


def run_client_command(args: argparse.Namespace) -> int:
    """Run a command registered by `add_client_commands`; returns the exit code."""
    command = getattr(args, "client_command", None)
    if command not in COMMANDS:
        print(f"smartgen: unknown command {command!r}", file=sys.stderr)
        return 2
    session: Session | None = None
    try:
        url = resolve_url(args.url)
        quiet = bool(args.json)
        api = Api(
            url,
            creds=CredentialStore(credentials_path()),
            email=args.email,
            password=args.password,
            notice=None if quiet else lambda msg: print(f"smartgen: {msg}", file=sys.stderr),
        )
        session = Session(api=api, json=quiet)
        return asyncio.run(_run(session, command, args))
    except ClientError as exc:
        print(f"smartgen: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        job_id = session.job_id if session else None
        hint = f": job {job_id} goes on, see `smartgen show {job_id}`" if job_id else ""
        print(f"smartgen: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unforeseen answer: still one line, no traceback
        print(f"smartgen: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartgen", description="The smartgen terminal client.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_client_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_client_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
