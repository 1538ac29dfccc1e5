"""The details of TokenCodec that mutation testing (bench/mutation.py) found unchecked:
the error codes clients branch on and the messages people read, the bounds of each claim,
a remembered token's expiry message, the leeway's edges, a token issued for given
minutes."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jwt
import pytest

from smartgen.auth.tokens import LEEWAY_SECONDS, MAX_ID_CHARS, MAX_NUMERIC_DATE
from tests.test_tokens import SECRET, codec, hand_made, mint, now, refused


@pytest.mark.parametrize(
    ("settings", "claims"),
    [
        ({"issuer": "smartgen"}, {"iss": "someone-else"}),
        ({"audience": "smartgen-api"}, {"aud": "other-api"}),
    ],
    ids=["issuer", "audience"],
)
def test_a_token_for_another_service_is_an_invalid_token(
    settings: dict[str, str], claims: dict[str, str]
) -> None:
    err = refused(mint({"sub": "u1", "exp": now() + 600, **claims}), codec(**settings))
    assert err.code == "invalid_token"
    assert err.message.startswith("Token is not for this service: ")


def test_a_remembered_token_that_expired_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = codec()
    token = mint({"sub": "user-1", "exp": now() + 60})
    tokens.verify(token)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    err = refused(token, tokens)
    assert (err.code, err.message) == ("token_expired", "Token has expired")


def test_a_remembered_token_is_accepted_up_to_the_last_second_of_the_leeway(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = codec()
    exp = now() + 60
    token = mint({"sub": "user-1", "exp": exp})
    tokens.verify(token)
    monkeypatch.setattr(time, "time", lambda: float(exp + LEEWAY_SECONDS))  # the edge itself
    assert tokens.verify(token).user_id == "user-1"
    monkeypatch.setattr(time, "time", lambda: exp + LEEWAY_SECONDS + 0.001)
    assert refused(token, tokens).code == "token_expired"


BAD_JTI = "Token's 'jti' claim must be a short string"
LONG_SUB = "Token's 'sub' claim is too long"


SOON = object()  # replaced by a time a minute after the test starts, not its collection


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "Malformed token"),
        ("only.two", "Malformed token"),
        ("a.b.c", "Malformed token"),  # three parts, none of them JSON
        (("hand_made", {"sub": "u"}), "Token lacks the 'exp' claim"),
        ({"sub": "u", "exp": 2**70}, "Token's 'exp' claim is out of range"),
        ({"sub": "u", "exp": -1}, "Token's 'exp' claim is out of range"),
        ({"sub": "u", "exp": MAX_NUMERIC_DATE}, "Token's 'exp' claim is out of range"),
        ({"sub": "u", "exp": SOON, "nbf": 0}, None),  # the epoch itself is a time
        ({"sub": "u", "exp": SOON, "jti": ""}, BAD_JTI),
        ({"sub": "u", "exp": SOON, "jti": "j" * (MAX_ID_CHARS + 1)}, BAD_JTI),
        ({"sub": "u", "exp": SOON, "jti": "j"}, None),
        ({"sub": "u", "exp": SOON, "jti": "j" * MAX_ID_CHARS}, None),
        ({"sub": "u" * MAX_ID_CHARS, "exp": SOON}, None),
        ({"sub": "u" * (MAX_ID_CHARS + 1), "exp": SOON}, LONG_SUB),
    ],
    ids=[
        "empty", "two-parts", "not-json", "no-exp", "exp-huge", "exp-negative", "exp-at-bound",
        "nbf-epoch", "jti-empty", "jti-long", "jti-one", "jti-at-bound", "sub-at-bound",
        "sub-long",
    ],
)  # fmt: skip
def test_each_refusal_is_an_invalid_token_that_says_why(token: Any, message: str | None) -> None:
    """Clients branch on the code and people read the message: both are the contract."""
    if isinstance(token, tuple):
        token = hand_made({"alg": "HS256"}, token[1], key=SECRET)
    elif isinstance(token, dict):
        token = mint({k: now() + 60 if v is SOON else v for k, v in token.items()})
    if message is None:
        assert codec().verify(token).user_id.startswith("u")
        return
    err = refused(token)
    assert (err.code, err.message) == ("invalid_token", message)


def test_a_token_that_is_not_valid_yet_is_refused_past_the_leeway_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start = now() + 100
    token = mint({"sub": "u", "exp": start + 600, "nbf": start})
    monkeypatch.setattr(time, "time", lambda: float(start - LEEWAY_SECONDS))  # the edge
    assert codec().verify(token).user_id == "u"
    monkeypatch.setattr(time, "time", lambda: start - LEEWAY_SECONDS - 0.001)
    err = refused(token)
    assert (err.code, err.message) == ("invalid_token", "Token is not valid yet")


def test_a_token_issued_for_given_minutes_expires_then() -> None:
    tokens = codec()
    token, expires = tokens.issue("u", minutes=5)
    left = (expires - datetime.now(UTC)).total_seconds()
    assert 290 < left <= 300
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert abs(exp - expires.timestamp()) < 1
