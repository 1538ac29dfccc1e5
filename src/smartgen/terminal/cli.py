"""The client's command line: the arguments of each command, and running one of them with
the exit code contract (0, 1 for failures, 2 for usage errors, 130 when interrupted)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from smartgen.models import CONTENT_TYPES, LENGTHS, TONES
from smartgen.terminal.api import Api
from smartgen.terminal.commands import COMMANDS
from smartgen.terminal.credentials import CredentialStore, credentials_path
from smartgen.terminal.errors import ClientError
from smartgen.terminal.output import Session
from smartgen.terminal.waiting import STATUSES, WAIT_MARGIN


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


def _not_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def add_client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the client's commands on the CLI's subparsers."""
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
    gen.add_argument(
        "--delay",
        type=_not_negative,
        metavar="SECONDS",
        help="seconds before the job may run (default: the server's GENERATION_DELAY_SECONDS)",
    )
    steer = gen.add_argument_group("steering (all optional)")
    steer.add_argument("--tone", choices=TONES, help="the tone of voice")
    steer.add_argument("--length", choices=LENGTHS, help="a word target per content type")
    steer.add_argument("--language", metavar="TAG", help="a BCP-47 tag: en, de, pt-BR, …")
    steer.add_argument("--audience", metavar="TEXT", help="who it is for (≤ 200 characters)")
    steer.add_argument(
        "--keyword",
        action="append",
        dest="keywords",
        metavar="WORD",
        help="a keyword to work in (repeat for more, at most 10)",
    )
    steer.add_argument("--model", help="one of the server's ALLOWED_MODELS")
    steer.add_argument("--temperature", type=_not_negative, metavar="T", help="0 to 2")
    steer.add_argument("--voice", metavar="VOICE_ID", help="one of your brand voices")
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

    for name, text in (
        ("cancel", "cancel a queued or running job"),
        ("run-now", "start a queued job at once"),
        ("retry", "queue a failed or cancelled job again"),
    ):
        control = sub.add_parser(name, parents=[common], help=text)
        control.add_argument("job_id", metavar="JOB_ID")
        control.set_defaults(client_command=name)

    another = sub.add_parser(
        "variations",
        parents=[common],
        help="queue another take of a completed job and print it",
        description="Queue another take of a completed job (same request and options, told "
        "to differ from the original), follow it and print the result.",
    )
    another.add_argument("job_id", metavar="JOB_ID")
    another.add_argument("--no-wait", action="store_true", help="queue it and return at once")
    another.add_argument(
        "--timeout", type=_positive(float), metavar="SECONDS", help="give up waiting after this"
    )
    another.set_defaults(client_command="variations")

    usage = sub.add_parser(
        "usage", parents=[common], help="your tokens, cost and budgets (this month by default)"
    )
    usage.add_argument("--from", dest="start", metavar="DATE", help="first day (YYYY-MM-DD)")
    usage.add_argument("--to", dest="end", metavar="DATE", help="the day after the last")
    usage.add_argument(
        "--by", choices=("day", "contentType", "model"), default="day", help="group by"
    )
    usage.set_defaults(client_command="usage")

    voices = sub.add_parser(
        "voices",
        parents=[common],
        help="list, add, show or delete your brand voices",
        description="`smartgen voices` lists them; `voices add NAME --description … --example "
        "…`, `voices show VOICE_ID`, `voices delete VOICE_ID`.",
    )
    voices.add_argument(
        "action", nargs="?", choices=("list", "add", "show", "delete"), default="list"
    )
    voices.add_argument("target", nargs="?", metavar="NAME|VOICE_ID")
    voices.add_argument("--description", default="", help="how the brand sounds (add)")
    voices.add_argument(
        "--example", action="append", dest="examples", metavar="TEXT", help="a sample (≤ 3)"
    )
    voices.set_defaults(client_command="voices")

    batch = sub.add_parser(
        "batch",
        parents=[common],
        help="run a CSV or JSONL file as a server-side batch",
        description="Submit FILE (CSV with a header row prompt,contentType,… or JSON Lines) "
        "as a batch; with --wait, follow it with a progress bar and download its results. "
        "The batch runs on the server whether or not this command stays.",
    )
    batch.add_argument("file", metavar="FILE")
    batch.add_argument("--wait", action="store_true", help="follow it, then fetch the results")
    batch.add_argument(
        "--output", metavar="PATH", help="results file (.csv or .jsonl; implies --wait; "
        "default FILE-results.csv)",
    )  # fmt: skip
    batch.add_argument(
        "--delay", type=_not_negative, metavar="SECONDS", help="run no sooner than this"
    )
    batch.add_argument(
        "--timeout", type=_positive(float), metavar="SECONDS", help="give up waiting after this"
    )
    batch.set_defaults(client_command="batch")
    status = sub.add_parser("batch-status", parents=[common], help="one batch's progress")
    status.add_argument("batch_id", metavar="BATCH_ID")
    status.set_defaults(client_command="batch-status")

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="follow your events live (GET /events); Ctrl-C stops",
        description="Print your events as they happen: status changes, text being written, "
        "results. Reconnects by itself and misses nothing the server still holds.",
    )
    watch.add_argument(
        "--after", type=int, metavar="SEQ", help="start after this event number (default: now)"
    )
    watch.add_argument("--count", type=_positive(int), metavar="N", help="stop after N events")
    watch.set_defaults(client_command="watch")


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
