"""What the user sees: results on stdout (Markdown, tables, or one JSON document with
`--json`), progress on stderr."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from smartgen.terminal.api import Api

if TYPE_CHECKING:
    from rich.console import Console


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

    def emit_line(self, document: Any) -> None:
        """One JSON document per line (a stream of them, for scripts)."""
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
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


STATUS_STYLE = {
    "queued": "cyan",
    "processing": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}
LIVE_TEXT_LINES = 12  # the end of the text being written, shown under the spinner


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
    options = {k: v for k, v in (job.get("options") or {}).items() if k != "voice"}
    if options:
        shown = ", ".join(
            f"{k}={'; '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in options.items()
        )
        out.print(Text(f"Options: {_excerpt(shown, 200)}", style="dim"))
    if job.get("parentJobId"):
        out.print(Text(f"Another take of job {job['parentJobId']}", style="dim"))
    usage = job.get("usage") or {}
    if status == "completed" and (usage or job.get("cost") is not None):
        cost = job.get("cost")
        spent = f"{usage.get('total_tokens', '?')} tokens"
        spent += f" · ${cost:.6f}" if isinstance(cost, int | float) else ""
        out.print(Text(f"Used: {spent}", style="dim"))
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
        if job.get("finishReason") == "length":
            out.print(Rule(style="dim"))
            out.print(
                Text(
                    "The text was cut off at the model's token limit (finishReason: length)",
                    style="yellow",
                )
            )
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
        self.written = ""  # the job's text so far, as job_progress events bring it
        if enabled and session.err.is_terminal:
            from rich.progress import BarColumn, SpinnerColumn, TextColumn
            from rich.progress import Progress as RichProgress
            from rich.text import Text

            shown = self

            class WithText(RichProgress):
                def get_renderables(self) -> Any:
                    yield from super().get_renderables()
                    if shown.written:
                        tail = shown.written.splitlines()[-LIVE_TEXT_LINES:]
                        yield Text("\n".join(tail), style="dim")

            self.live = WithText(
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

    def text(self, delta: str, *, reset: bool) -> None:
        """Text the job wrote (`reset`: what came before is void)."""
        self.written = delta if reset else self.written + delta
        if self.live is not None:
            self.live.refresh()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def _text(text: str) -> Any:
    from rich.text import Text

    return Text(text)
