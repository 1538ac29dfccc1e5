"""Turning "the database did not answer" into `StoreUnavailable` (503 in the API)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any, Final, ParamSpec, TypeVar

from smartgen.errors import StoreUnavailable

P = ParamSpec("P")
R = TypeVar("R")
AsyncFn = Callable[P, Coroutine[Any, Any, R]]

UNAVAILABLE_MESSAGE: Final = "The database is unavailable; try again shortly"


def translate_unavailable(
    is_unavailable: Callable[[BaseException], bool], message: str = UNAVAILABLE_MESSAGE
) -> Callable[[AsyncFn[P, R]], AsyncFn[P, R]]:
    """A decorator for repository methods: errors that `is_unavailable` recognises become
    `StoreUnavailable(message)`; every other error passes through unchanged."""

    def decorate(fn: AsyncFn[P, R]) -> AsyncFn[P, R]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except Exception as error:
                if is_unavailable(error):
                    raise StoreUnavailable(message) from error
                raise

        return wrapper

    return decorate


class NoConnection(Exception):
    """No connection could be had (raised chained to the cause): the store was closed,
    connecting failed or was refused, or no connection came free in time."""
