"""JWT access tokens: HS256 with JWT_SECRET, user id in `sub` (or `id` / `userId`)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from smartgen.errors import Unauthorized

ALGORITHM = "HS256"
LEEWAY_SECONDS = 5
# Verified tokens remembered per process (a client sends the same token with every
# request): about 0.5 KB each.
VERIFIED_CACHE_SIZE = 4096
# 9999-12-31T23:59:59Z: later times do not fit a datetime.
MAX_NUMERIC_DATE = 253402300800
MAX_ID_CHARS = 128


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: str
    expires_at: datetime | None = None
    token_id: str | None = None  # the `jti` claim: what logout revokes
    issued_at: float | None = None  # the `iat` claim, as a Unix time
    # An API key's scopes and id; None for a login token, which may do everything.
    scopes: frozenset[str] | None = None
    key_id: str | None = None


class TokenCodec:
    def __init__(
        self,
        secret: str,
        *,
        expires_minutes: int,
        issuer: str | None = None,
        audience: str | None = None,
    ) -> None:
        self._secret = secret
        self._ttl = timedelta(minutes=expires_minutes)
        self._issuer = issuer
        self._audience = audience
        # token → (principal, expiry as a Unix time). Only tokens that passed the full
        # check get here, and the expiry is checked again on every use.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(
        self, user_id: str, *, email: str | None = None, minutes: int | None = None
    ) -> tuple[str, datetime]:
        """A token for `user_id`, valid JWT_EXPIRES_MINUTES (or `minutes`)."""
        now = datetime.now(UTC)
        expires = now + (self._ttl if minutes is None else timedelta(minutes=minutes))
        claims: dict[str, Any] = {
            "sub": user_id,
            # With its fraction (RFC 7519 allows it): a token issued in the same second as
            # a revocation cut (a password change) falls on the right side of it.
            "iat": round(now.timestamp(), 6),
            "nbf": now,
            "exp": expires,
            "jti": secrets.token_urlsafe(16),  # what logout and revocation name
        }
        if email:
            claims["email"] = email
        if self._issuer:
            claims["iss"] = self._issuer
        if self._audience:
            claims["aud"] = self._audience
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires

    def verify(self, token: str) -> Principal:
        """Verify a token; raise `Unauthorized` saying why it is refused.

        A token already verified by this codec is not decoded again until it expires: the
        signature, issuer, audience and not-before cannot change for the same string, and
        decoding is a large part of a small request's work."""
        known = self._verified.get(token)
        if known is not None:
            if time.time() <= known[1] + LEEWAY_SECONDS:
                return known[0]
            del self._verified[token]
            raise Unauthorized("Token has expired", code="token_expired")
        principal = self._verify(token)
        if principal.expires_at is not None:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                # The oldest entry goes first (dicts keep insertion order).
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (principal, principal.expires_at.timestamp())
        return principal

    def _verify(self, token: str) -> Principal:
        if not token or token.count(".") != 2:
            raise Unauthorized("Malformed token", code="invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("Malformed token", code="invalid_token") from None
        if header.get("alg") != ALGORITHM:
            raise Unauthorized(
                f"Token algorithm {header.get('alg')!r} is not accepted (HS256 only)",
                code="invalid_token",
            )
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                issuer=self._issuer,
                audience=self._audience,
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                    # The times are checked below, types and ranges first: PyJWT converts
                    # with int() (a string `exp` passed) and overflows on 1e20 (a 500).
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    # PyJWT >= 2.10 refuses a non-string `sub`; a Node app may mint a numeric
                    # one. The user-id lookup below checks its type.
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized("Token signature is invalid", code="invalid_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(
                f"Token lacks the {exc.claim!r} claim", code="invalid_token"
            ) from None
        except (jwt.InvalidIssuerError, jwt.InvalidAudienceError) as exc:
            raise Unauthorized(
                f"Token is not for this service: {exc}", code="invalid_token"
            ) from None
        except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
            raise Unauthorized("Malformed token", code="invalid_token") from None
        if not isinstance(claims, dict):
            raise Unauthorized("Malformed token", code="invalid_token")
        now = time.time()
        exp = _time_claim(claims, "exp")
        nbf = _time_claim(claims, "nbf")
        iat = _time_claim(claims, "iat")
        if exp is None:
            raise Unauthorized("Token lacks the 'exp' claim", code="invalid_token")
        if exp + LEEWAY_SECONDS < now:
            raise Unauthorized("Token has expired", code="token_expired")
        if (nbf is not None and nbf - LEEWAY_SECONDS > now) or (
            iat is not None and iat - LEEWAY_SECONDS > now
        ):
            raise Unauthorized("Token is not valid yet", code="invalid_token")
        jti = claims.get("jti")
        if jti is not None and not (isinstance(jti, str) and 0 < len(jti) <= MAX_ID_CHARS):
            raise Unauthorized("Token's 'jti' claim must be a short string", code="invalid_token")
        # Tokens minted by an existing Node app may carry the id as `id` or `userId`.
        for claim in ("sub", "id", "userId", "_id"):
            value = claims.get(claim)
            if isinstance(value, bool) or not isinstance(value, str | int):
                continue  # absent, or not an id: the next name may hold it
            text = str(value).strip()
            if not text:
                continue
            if len(text) > MAX_ID_CHARS:
                raise Unauthorized(f"Token's {claim!r} claim is too long", code="invalid_token")
            return Principal(
                user_id=text,
                expires_at=datetime.fromtimestamp(exp, UTC),
                token_id=jti,
                issued_at=iat,
            )
        raise Unauthorized("Token has no user id (sub, id or userId)", code="invalid_token")


def _time_claim(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519: seconds since the epoch) within sane bounds, or None
    when absent; `Unauthorized` for a string, a boolean, NaN or a time past year 9999."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Unauthorized(f"Token's {name!r} claim must be a number", code="invalid_token")
    if not 0 <= value < MAX_NUMERIC_DATE:  # also false for NaN
        raise Unauthorized(f"Token's {name!r} claim is out of range", code="invalid_token")
    return float(value)


def bearer_token(authorization: str | None) -> str:
    """Extract the token from an `Authorization: Bearer …` header."""
    if not authorization:
        raise Unauthorized(
            "Missing Authorization header (expected: Bearer <token>)", code="missing_token"
        )
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization header must be: Bearer <token>", code="invalid_token")
    return token.strip()
