"""Password hashing: argon2id (argon2-cffi's defaults follow RFC 9106's recommendations),
off the event loop and bounded.

Passwords are NFKC-normalised first, so that the same password typed on another keyboard
or input method (a full-width digit, a precomposed accent) matches. Hashes made before
normalisation still verify: the raw form is tried when the normalised one fails, and the
caller rehashes on success (`Verified.rehash`)."""

from __future__ import annotations

import asyncio
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from smartgen.errors import ServiceUnavailable

T = TypeVar("T")
_hasher = PasswordHasher()
# A hash to verify against when the email is unknown, so that login takes the same
# time whether or not the account exists.
_DUMMY_HASH = _hasher.hash("smartgen-timing-equaliser")
# Requests that may wait for a hashing slot, per slot: beyond them the answer is at once.
WAITERS_PER_SLOT = 8


def normalised(password: str) -> str:
    return unicodedata.normalize("NFKC", password)


class HashingSlots:
    """At most `size` argon2 computations at once in this process (each takes a core for
    tens of milliseconds and 64 MiB), and a short line of waiters; a request past both is
    answered 503 with Retry-After at once, instead of piling up memory and slowing every
    other request."""

    def __init__(self, size: int = 0) -> None:
        self.size = size or os.cpu_count() or 1
        self._semaphore = asyncio.Semaphore(self.size)
        self._inside = 0  # running + waiting
        self._room = self.size * (1 + WAITERS_PER_SLOT)

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        if self._inside >= self._room:
            raise ServiceUnavailable(
                "Too many password checks at once; try again in a second",
                code="server_busy",
                headers={"Retry-After": "1"},
            )
        self._inside += 1
        try:
            async with self._semaphore:
                return await asyncio.to_thread(work, *args)
        finally:
            self._inside -= 1


@dataclass(frozen=True, slots=True)
class Verified:
    ok: bool
    rehash: bool = False  # matched the raw (not normalised) form: store a new hash


async def hash_password(password: str, slots: HashingSlots) -> str:
    return await slots.run(_hasher.hash, normalised(password))


async def verify_password(
    password_hash: str | None, password: str, slots: HashingSlots
) -> Verified:
    nfkc = normalised(password)

    def check() -> Verified:
        stored = password_hash or _DUMMY_HASH
        for candidate, rehash in ((nfkc, False), (password, True)):
            if rehash and candidate == nfkc:
                break
            try:
                if _hasher.verify(stored, candidate):
                    return Verified(ok=bool(password_hash), rehash=rehash)
            except (VerificationError, InvalidHashError):
                continue
        return Verified(ok=False)

    return await slots.run(check)
