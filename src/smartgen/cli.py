"""`smartgen api | worker | dev | status` and the terminal client's commands: argument parsing only;
the processes are `server/`'s, the client's `terminal/`'s."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from smartgen import __version__
from smartgen.config import ConfigError, load_settings
from smartgen.errors import StoreUnavailable
from smartgen.terminal import add_client_commands, run_client_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smartgen", description="Queued AI content generation: API, worker and tools."
    )
    parser.add_argument("--version", action="version", version=f"smartgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="run the HTTP + Socket.IO API (PORT, default 5000)")
    sub.add_parser("worker", help="run the background worker")
    sub.add_parser("dev", help="run the API and the worker together")
    status = sub.add_parser(
        "status", help="queue, workers, stuck jobs, Redis and store health (exit 1: attention)"
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a waiting job older than this needs attention (default 60)",
    )
    add_client_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "client_command", None):
        return run_client_command(args)  # a client of a running server: no server settings
    try:
        settings = load_settings()
        from smartgen.server.startup import setup_logging

        setup_logging(settings.log_level, settings.log_format)
        if args.command == "api":
            from smartgen.server.api import run_api

            return run_api(settings)
        if args.command == "worker":
            from smartgen.server.worker import run_worker_process

            return run_worker_process(settings)
        if args.command == "status":
            from smartgen.server.status import run_status

            return run_status(settings, as_json=args.json, max_wait_seconds=args.max_wait)
        if args.command == "dev":
            from smartgen.server.dev import run_dev

            return run_dev(settings)
    except ConfigError as exc:
        print(f"smartgen: configuration error: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailable as exc:
        print(f"smartgen: {exc.message}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
