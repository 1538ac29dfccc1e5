"""The terminal client's failures: each is reported as one `smartgen: …` line on stderr."""

from __future__ import annotations


class ClientError(Exception):
    """A failure reported as one line on stderr."""

    def __init__(self, message: str, *, exit_code: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.exit_code = exit_code
        self.status = status


class Unreachable(ClientError):
    """No connection to the server (as opposed to an answer we did not like)."""
