"""/auth: register, login, me, and the web console's refresh (README: Design, "The
console's session")."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Cookie, Header, Query, Request, Response, status

from smartgen.api.deps import (
    AddressDep,
    AttemptsDep,
    HashingDep,
    ReadUser,
    RefreshDep,
    SettingsDep,
    StoreDep,
    TokensDep,
    rate_limit,
)
from smartgen.auth import service
from smartgen.auth.schemas import Credentials, Registration, TokenResponse, UserOut, user_out
from smartgen.config import Settings
from smartgen.errors import Forbidden, Unauthorized, error_responses
from smartgen.kit.times import iso_ms
from smartgen.ports import RefreshTokens

# The console's refresh token: HttpOnly (no script reads it), SameSite=Strict (no other
# site's page sends it), scoped to /auth (only refresh and logout ever receive it).
REFRESH_COOKIE = "smartgen_refresh"
COOKIE_PATH = "/auth"
# What /auth/refresh requires besides the cookie: a header no form or cross-site request
# can send without a CORS preflight (which CORS_ORIGINS never allows for it).
CSRF_HEADER = "X-Smartgen-Session"
SessionMode = Annotated[
    Literal["cookie"] | None,
    Query(
        alias="session",
        description="`cookie`: a web console session: a short-lived access token (its "
        "lifetime CONSOLE_TOKEN_MINUTES) and a rotating refresh token in an HttpOnly "
        "cookie for `POST /auth/refresh`",
    ),
]
RefreshCookie = Annotated[str | None, Cookie(alias=REFRESH_COOKIE, include_in_schema=False)]

router = APIRouter(
    prefix="/auth", tags=["auth"], responses=error_responses(400, 413, 415, 422, 429, 503)
)

register_limit = rate_limit(
    "register-ip",
    lambda s: (s.register_ip_rate_limit, s.register_rate_window_seconds),
    per="address",
    fail_open=True,
)
login_limit = rate_limit(
    "login-ip",
    lambda s: (s.login_ip_rate_limit, s.login_rate_window_seconds),
    per="address",
    fail_open=True,
)


def console(settings: Settings, refresh: RefreshTokens) -> service.ConsoleSessions:
    return service.ConsoleSessions(refresh=refresh, minutes=settings.console_token_minutes)


def set_refresh_cookie(
    response: Response, request: Request, session: service.Session, settings: Settings
) -> None:
    if session.refresh_token is None:
        return
    response.set_cookie(
        REFRESH_COOKIE,
        session.refresh_token,
        max_age=int(settings.refresh_token_days * 86400),
        path=COOKIE_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def clear_refresh_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        REFRESH_COOKIE,
        path=COOKIE_PATH,
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
    )


def token_response(session: service.Session) -> TokenResponse:
    user = session.user
    return TokenResponse(
        token=session.token,
        accessToken=session.token,
        expiresAt=iso_ms(session.expires_at),
        user=user_out(user.user_id, user.email, user.created_at),
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(409),
    dependencies=[register_limit],
)
async def register(
    body: Registration,
    request: Request,
    response: Response,
    store: StoreDep,
    tokens: TokensDep,
    hashing: HashingDep,
    settings: SettingsDep,
    refresh: RefreshDep,
    session_mode: SessionMode = None,
) -> TokenResponse:
    """Create an account and return an access token (409 when the email is taken)."""
    session = await service.register(
        store=store,
        tokens=tokens,
        slots=hashing,
        email=body.email,
        password=body.password,
        console=console(settings, refresh) if session_mode == "cookie" else None,
    )
    set_refresh_cookie(response, request, session, settings)
    return token_response(session)


@router.post("/login", responses=error_responses(401), dependencies=[login_limit])
async def login(
    body: Credentials,
    request: Request,
    response: Response,
    settings: SettingsDep,
    refresh: RefreshDep,
    store: StoreDep,
    tokens: TokensDep,
    hashing: HashingDep,
    attempts: AttemptsDep,
    address: AddressDep,
    session_mode: SessionMode = None,
) -> TokenResponse:
    """Exchange email and password for an access token (401 when they do not match; 429
    after too many failures from the caller's address, see README: Security)."""
    session = await service.log_in(
        store=store,
        tokens=tokens,
        slots=hashing,
        attempts=attempts,
        email=body.email,
        password=body.password,
        address=address,
        console=console(settings, refresh) if session_mode == "cookie" else None,
    )
    set_refresh_cookie(response, request, session, settings)
    return token_response(session)


refresh_limit = rate_limit(
    "refresh-ip",
    lambda s: (s.login_ip_rate_limit, s.login_rate_window_seconds),
    per="address",
    fail_open=True,
)


@router.post("/refresh", responses=error_responses(401, 403), dependencies=[refresh_limit])
async def refresh_session(
    request: Request,
    response: Response,
    store: StoreDep,
    tokens: TokensDep,
    settings: SettingsDep,
    refresh: RefreshDep,
    cookie: RefreshCookie = None,
    csrf: Annotated[
        str | None,
        Header(alias=CSRF_HEADER, description="Required: `refresh` (a CSRF guard)"),
    ] = None,
) -> TokenResponse:
    """A web console session's new access token, from its refresh cookie (rotated: the
    old one is spent; a spent one ends the session); needs `X-Smartgen-Session: refresh`."""
    if csrf != "refresh":
        raise Forbidden(
            f"Send the header {CSRF_HEADER}: refresh (a guard against cross-site requests)",
            code="csrf_check_failed",
        )
    if not cookie:
        raise Unauthorized("No console session (no refresh cookie); sign in", code="no_session")
    try:
        session = await service.refresh_session(
            store=store, tokens=tokens, console=console(settings, refresh), refresh_token=cookie
        )
    except Unauthorized as exc:
        # The cookie is worthless now: the browser forgets it.
        exc.headers = {**(exc.headers or {}), "Set-Cookie": _cleared_cookie(request)}
        raise
    set_refresh_cookie(response, request, session, settings)
    return token_response(session)


def _cleared_cookie(request: Request) -> str:
    scratch = Response()
    clear_refresh_cookie(scratch, request)
    return scratch.headers["set-cookie"]


@router.get("/me", responses=error_responses(401, 404))
async def me(user: ReadUser, store: StoreDep) -> UserOut:
    """The account the token belongs to."""
    found = await service.get_user(store=store, user_id=user.user_id)
    return user_out(found.user_id, found.email, found.created_at)
