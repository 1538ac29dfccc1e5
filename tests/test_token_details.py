"""The details of TokenCodec that mutation testing (bench/mutation.py) found unchecked:
the error codes clients branch on, a remembered token's expiry message, the leeway's edge."""

from __future__ import annotations

import time

import pytest

from smartgen.auth.tokens import LEEWAY_SECONDS
from tests.test_tokens import codec, mint, now, refused


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
