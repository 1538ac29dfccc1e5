"""JWT access tokens: HS256 with JWT_SECRET, user id in `sub` (or `id` / `userId`)."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: str
    expires_at: datetime | None = None


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

    def issue(self, user_id: str, *, email: str | None = None) -> tuple[str, datetime]:
        now = datetime.now(UTC)
        expires = now + self._ttl
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "nbf": now, "exp": expires}
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
                    # PyJWT >= 2.10 refuses a non-string `sub`; a Node app may mint a numeric
                    # one. The user-id lookup below checks its type.
                    "verify_sub": False,
                },
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("Token has expired", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("Token is not valid yet", code="invalid_token") from None
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
        except jwt.PyJWTError:
            raise Unauthorized("Malformed token", code="invalid_token") from None
        # Tokens minted by an existing Node app may carry the id as `id` or `userId`.
        for claim in ("sub", "id", "userId", "_id"):
            value = claims.get(claim)
            if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
                exp = claims.get("exp")
                expires = datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None
                return Principal(user_id=str(value).strip(), expires_at=expires)
        raise Unauthorized("Token has no user id (sub, id or userId)", code="invalid_token")


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
