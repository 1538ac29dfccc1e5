"""Routes served without FastAPI's per-request machinery, for the busiest route.

FastAPI answers a request through about a dozen nested layers (Starlette's error and
exception middleware, its router, FastAPI's request handler, `solve_dependencies`), each
generic: on a `POST /generate-content` they were about a quarter of the API's CPU
(bench/HISTORY.md, eleventh round). A `DirectRoute` serves one FastAPI route of a simple
shape, worked out once from the route itself at start-up: one JSON body (a pydantic
model), header parameters, dependencies that take only the request, and the request.
It validates, calls the same dependencies and the same endpoint function, and answers
what the endpoint returns, or renders an error with the app's own exception handlers.

It never decides anything FastAPI would decide differently: whatever it does not serve
itself goes to the app as it came (the body replayed), before any dependency has run.
That is a body that is not valid JSON or not valid for the model, a header that is not
valid for its parameter, dependency overrides, and an app with middleware of its own
(CORS): FastAPI then answers the request, its errors included, exactly as without this
path. The OpenAPI schema is the route's, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import Response

# The app as it came: (scope, receive, send).
Fallback = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


class NotDirect(ValueError):
    """The route has a part a `DirectRoute` does not serve (it would differ from FastAPI)."""


class DirectRoute:
    def __init__(self, app: FastAPI, route: APIRoute) -> None:
        dependant = route.dependant
        if (
            dependant.path_params
            or dependant.query_params
            or dependant.cookie_params
            or dependant.response_param_name
            or dependant.background_tasks_param_name
            or dependant.security_scopes_param_name
            or dependant.websocket_param_name
            or dependant.http_connection_param_name
            or len(dependant.body_params) != 1
        ):
            raise NotDirect(f"{route.path}: only a JSON body, headers and the request")
        body = dependant.body_params[0]
        model = body.field_info.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise NotDirect(f"{route.path}: the body must be one pydantic model")
        self._body_name = body.name
        self._model: type[BaseModel] = model
        # (parameter, header name as ASGI gives it, validator, default): FastAPI reads a
        # header's first value.
        self._headers: list[tuple[str, bytes, TypeAdapter[Any], Any]] = [
            (
                field.name,
                field.alias.lower().encode("latin-1"),
                TypeAdapter(Annotated[field.field_info.annotation, field.field_info]),  # type: ignore[arg-type]
                field.field_info.get_default(call_default_factory=True),
            )
            for field in dependant.header_params
        ]
        # (parameter, the dependency, the name it takes the request by)
        self._dependencies: list[tuple[str, Callable[..., Awaitable[Any]], str]] = []
        for sub in dependant.dependencies:
            if (
                sub.name is None
                or sub.call is None
                or sub.dependencies
                or sub.path_params
                or sub.query_params
                or sub.header_params
                or sub.cookie_params
                or sub.body_params
                or sub.request_param_name is None
            ):
                raise NotDirect(f"{route.path}: dependencies may take only the request")
            self._dependencies.append((sub.name, sub.call, sub.request_param_name))
        self._request_name = dependant.request_param_name
        self._endpoint = route.endpoint
        self._route = route
        self._app = app

    async def __call__(
        self, scope: dict[str, Any], body: bytes, receive: Any, send: Any, fallback: Fallback
    ) -> None:
        """Serve the request whose whole body is `body` (`receive` replays it), or hand it
        to `fallback` untouched."""
        arguments = None if self._app.dependency_overrides else self._arguments(scope, body)
        if arguments is None:
            await fallback(scope, receive, send)
            return
        # What Starlette's router puts in the scope for the route it chose.
        scope["app"] = self._app
        scope["route"] = self._route
        scope["endpoint"] = self._endpoint
        scope["path_params"] = {}
        request = Request(scope, receive)
        try:
            for name, call, takes in self._dependencies:
                arguments[name] = await call(**{takes: request})
            if self._request_name is not None:
                arguments[self._request_name] = request
            response = await self._endpoint(**arguments)
            if not isinstance(response, Response):
                raise TypeError(f"{self._route.path}: a direct route's endpoint answers a Response")
        except Exception as exc:
            kind, handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
            if kind is Exception:  # Starlette's catch-all 500: answered, then raised again
                await response(scope, receive, send)
                raise  # the server's last stop (api.edge) only logs it
        await response(scope, receive, send)

    def _arguments(self, scope: dict[str, Any], body: bytes) -> dict[str, Any] | None:
        """The body and headers as the endpoint takes them; None when FastAPI should say
        what is wrong with them."""
        try:
            value = json.loads(body)
            arguments: dict[str, Any] = {self._body_name: self._model.model_validate(value)}
        except Exception:  # not JSON (too deep, bad UTF-8…) or not the model: FastAPI says
            return None
        for name, header, adapter, default in self._headers:
            raw = next((v for k, v in scope["headers"] if k.lower() == header), None)
            if raw is None:
                arguments[name] = default
                continue
            try:
                arguments[name] = adapter.validate_python(raw.decode("latin-1"))
            except ValidationError:
                return None
        return arguments

    def _handler(self, exc: Exception) -> tuple[type, Any]:
        """The app's handler for `exc` and the class it is registered for, as Starlette
        looks it up (the nearest class up the error's hierarchy); None for none."""
        handlers = self._app.exception_handlers
        for kind in type(exc).__mro__:
            if kind in handlers:
                return kind, handlers[kind]
        return type(exc), None


def direct_routes(
    app: FastAPI, router: APIRouter, wanted: list[tuple[str, str]]
) -> dict[tuple[str, str], DirectRoute]:
    """The direct routes for the (method, path) pairs of `wanted`, each its FastAPI route
    in `router` (included in `app` as it is: no prefix or dependencies added at
    inclusion); none when the app has middleware of its own, which they would skip."""
    if app.user_middleware:
        return {}
    found: dict[tuple[str, str], DirectRoute] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            for method in route.methods or ():
                if (method, route.path) in wanted:
                    found[(method, route.path)] = DirectRoute(app, route)
    missing = set(wanted) - set(found)
    if missing:
        raise NotDirect(f"no such route: {sorted(missing)}")
    return found
