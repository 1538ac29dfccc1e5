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

from smartgen.terminal.cli import add_client_commands, run_client_command

__all__ = ["add_client_commands", "run_client_command"]
