"""TokenCodec and bearer_token: tokens we issue, and tokens a Node app minted (jsonwebtoken)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from smartgen.auth.tokens import TokenCodec, bearer_token
from smartgen.errors import Unauthorized

SECRET = "test-secret-" + "s" * 40
OTHER_SECRET = "other-secret-" + "o" * 40


def codec(**kw: Any) -> TokenCodec:
    kw.setdefault("expires_minutes", 60)
    return TokenCodec(SECRET, **kw)


def now() -> int:
    return int(time.time())


def mint(claims: dict[str, Any], *, key: str = SECRET, algorithm: str = "HS256") -> str:
    """A token as another app would mint it (PyJWT here, jsonwebtoken in Node)."""
    return jwt.encode(claims, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def hand_made(
    header: dict[str, Any], payload: dict[str, Any], *, key: str | None, digest: str = "sha256"
) -> str:
    """A token built by hand; signed HMAC-`digest` with `key`, or with an empty signature."""
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    signature = ""
    if key is not None:
        signature = b64(hmac.new(key.encode(), signing_input.encode(), digest).digest())
    return f"{signing_input}.{signature}"


def refused(token: str, tokens: TokenCodec | None = None) -> Unauthorized:
    with pytest.raises(Unauthorized) as info:
        (tokens or codec()).verify(token)
    err = info.value
    assert err.status_code == 401
    assert err.headers == {"WWW-Authenticate": "Bearer"}
    return err


# --- issue / verify -----------------------------------------------------------------------


def test_issue_verify_round_trip() -> None:
    tokens = codec(expires_minutes=30)
    before = datetime.now(UTC)
    token, expires = tokens.issue("user-123", email="a@example.com")
    assert before + timedelta(minutes=30) <= expires <= datetime.now(UTC) + timedelta(minutes=30)
    principal = tokens.verify(token)
    assert principal.user_id == "user-123"
    assert principal.expires_at is not None
    # `exp` is whole seconds on the wire.
    assert abs((principal.expires_at - expires).total_seconds()) < 1


def test_issued_token_claims_and_header() -> None:
    token, expires = codec(issuer="smartgen", audience="smartgen-api").issue(
        "u1", email="a@example.com"
    )
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="smartgen-api")
    assert claims["sub"] == "u1"
    assert claims["email"] == "a@example.com"
    assert claims["iss"] == "smartgen"
    assert claims["aud"] == "smartgen-api"
    assert claims["exp"] == int(expires.timestamp())
    assert claims["iat"] <= claims["nbf"] + 1
    assert 60 * 60 - 1 < claims["exp"] - claims["iat"] <= 60 * 60


def test_issued_token_without_optional_claims() -> None:
    token, _ = codec().issue("u1")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "iat", "nbf", "exp", "jti"}


def test_issued_token_verifies_with_issuer_and_audience() -> None:
    tokens = codec(issuer="smartgen", audience="smartgen-api")
    token, _ = tokens.issue("u9")
    assert tokens.verify(token).user_id == "u9"


def test_token_from_another_codec_secret_is_refused() -> None:
    token, _ = TokenCodec(OTHER_SECRET, expires_minutes=5).issue("u1")
    assert refused(token).message == "Token signature is invalid"


# --- user id claims (Node-minted tokens) --------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "user_id"),
    [
        ({"sub": "abc"}, "abc"),
        ({"id": "65f0c0ffee"}, "65f0c0ffee"),
        ({"userId": "u-7"}, "u-7"),
        ({"_id": "mongo-id"}, "mongo-id"),
        ({"id": 42}, "42"),
        ({"sub": 42}, "42"),  # jsonwebtoken signs a numeric sub happily
        ({"userId": 7}, "7"),
        ({"sub": "  padded  "}, "padded"),
        ({"sub": "s", "id": "i", "userId": "u"}, "s"),
        ({"id": "i", "userId": "u"}, "i"),
        ({"sub": "", "id": "i"}, "i"),
        ({"sub": "   ", "userId": "u"}, "u"),
        ({"sub": None, "id": None, "userId": "u"}, "u"),
        ({"sub": {"nested": 1}, "userId": "u"}, "u"),
    ],
)
def test_user_id_claim(claims: dict[str, Any], user_id: str) -> None:
    exp = now() + 600
    principal = codec().verify(mint({**claims, "iat": now(), "exp": exp}))
    assert (principal.user_id, principal.expires_at) == (user_id, datetime.fromtimestamp(exp, UTC))


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"email": "a@example.com"},
        {"sub": ""},
        {"id": "   "},
        {"sub": True},
        {"id": False},
        {"userId": 7.5},
        {"sub": ["a"]},
        {"user_id": "snake"},
    ],
)
def test_token_without_user_id_is_refused(claims: dict[str, Any]) -> None:
    err = refused(mint({**claims, "exp": now() + 600}))
    assert err.message == "Token has no user id (sub, id or userId)"
    assert err.code == "invalid_token"


# --- refused tokens -----------------------------------------------------------------------


def test_expired_token() -> None:
    err = refused(mint({"sub": "u1", "iat": now() - 3600, "exp": now() - 60}))
    assert err.message == "Token has expired"
    assert err.code == "token_expired"


def test_expired_within_leeway_is_accepted() -> None:
    assert codec().verify(mint({"sub": "u1", "exp": now() - 2})).user_id == "u1"


def test_not_yet_valid_token() -> None:
    err = refused(mint({"sub": "u1", "nbf": now() + 120, "exp": now() + 3600}))
    assert err.message == "Token is not valid yet"
    assert err.code == "invalid_token"


def test_not_yet_valid_within_leeway_is_accepted() -> None:
    token = mint({"sub": "u1", "nbf": now() + 2, "exp": now() + 3600})
    assert codec().verify(token).user_id == "u1"


def test_wrong_key() -> None:
    err = refused(mint({"sub": "u1", "exp": now() + 600}, key=OTHER_SECRET))
    assert err.message == "Token signature is invalid"
    assert err.code == "invalid_token"


def test_tampered_payload() -> None:
    token = mint({"sub": "u1", "exp": now() + 600})
    header, _, signature = token.split(".")
    forged = f"{header}.{b64json({'sub': 'admin', 'exp': now() + 600})}.{signature}"
    assert refused(forged).message == "Token signature is invalid"


def test_hand_made_token_with_the_right_key_is_accepted() -> None:
    """The hand-made tokens below are refused for their header, not for how they are built."""
    token = hand_made({"alg": "HS256", "typ": "JWT"}, {"sub": "u1", "exp": now() + 60}, key=SECRET)
    assert codec().verify(token).user_id == "u1"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_is_refused(alg: str) -> None:
    token = hand_made({"alg": alg, "typ": "JWT"}, {"sub": "u1", "exp": now() + 600}, key=None)
    assert token.endswith(".")
    err = refused(token)
    assert err.message == f"Token algorithm {alg!r} is not accepted (HS256 only)"
    assert err.code == "invalid_token"


def test_header_without_alg_is_refused() -> None:
    token = hand_made({"typ": "JWT"}, {"sub": "u1", "exp": now() + 600}, key=SECRET)
    assert refused(token).message == "Token algorithm None is not accepted (HS256 only)"


def test_hs512_is_refused_even_with_the_right_secret() -> None:
    # A genuine HS512 token, signed by hand: PyJWT warns about a 52-byte HS512 key.
    header = {"alg": "HS512", "typ": "JWT"}
    token = hand_made(header, {"sub": "u1", "exp": now() + 600}, key=SECRET, digest="sha512")
    assert refused(token).message == "Token algorithm 'HS512' is not accepted (HS256 only)"


@pytest.mark.parametrize("alg", ["RS256", "ES256", "PS256", "EdDSA"])
def test_asymmetric_algorithm_header_is_refused(alg: str) -> None:
    """Algorithm confusion: a token claiming RS256 (signed with anything, here our secret)."""
    token = hand_made({"alg": alg, "typ": "JWT"}, {"sub": "u1", "exp": now() + 600}, key=SECRET)
    assert refused(token).message == f"Token algorithm {alg!r} is not accepted (HS256 only)"


def test_missing_exp_is_refused() -> None:
    err = refused(mint({"sub": "u1", "iat": now()}))
    assert err.message == "Token lacks the 'exp' claim"
    assert err.code == "invalid_token"


@pytest.mark.parametrize("exp", ["tomorrow", None, [1]])
def test_non_numeric_exp_is_refused(exp: Any) -> None:
    err = refused(hand_made({"alg": "HS256"}, {"sub": "u1", "exp": exp}, key=SECRET))
    assert err.code == "invalid_token"
    assert err.message in {
        "Malformed token",
        "Token lacks the 'exp' claim",
        "Token's 'exp' claim must be a number",
    }


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a.b.c",
        "...",
        "!!!.???.###",
        "é.b.c",
        "Bearer x.y.z",
        f"{b64json(['not', 'an', 'object'])}.{b64json({'sub': 'u1'})}.sig",
        f"{b64(b'not json')}.{b64json({'sub': 'u1'})}.sig",
    ],
)
def test_malformed_strings(token: str) -> None:
    err = refused(token)
    assert err.message == "Malformed token"
    assert err.code == "invalid_token"


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1, 2]", b'"string"', json.dumps({"sub": "u1"}).encode()[:-1]]
)
def test_signed_but_malformed_payload(payload: bytes) -> None:
    signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}"
    sig = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
    assert refused(f"{signing_input}.{sig}").message == "Malformed token"


def test_issuer_mismatch() -> None:
    tokens = codec(issuer="smartgen")
    err = refused(mint({"sub": "u1", "iss": "someone-else", "exp": now() + 600}), tokens)
    assert err.message.startswith("Token is not for this service:")
    assert "issuer" in err.message.lower()


def test_issuer_missing_when_configured() -> None:
    err = refused(mint({"sub": "u1", "exp": now() + 600}), codec(issuer="smartgen"))
    assert err.message == "Token lacks the 'iss' claim"


def test_audience_mismatch() -> None:
    tokens = codec(audience="smartgen-api")
    err = refused(mint({"sub": "u1", "aud": "other-api", "exp": now() + 600}), tokens)
    assert err.message.startswith("Token is not for this service:")
    assert "audience" in err.message.lower()


def test_audience_missing_when_configured() -> None:
    err = refused(mint({"sub": "u1", "exp": now() + 600}), codec(audience="smartgen-api"))
    assert err.message == "Token lacks the 'aud' claim"


def test_audience_list_containing_ours_is_accepted() -> None:
    token = mint({"sub": "u1", "aud": ["a", "smartgen-api"], "exp": now() + 600})
    assert codec(audience="smartgen-api").verify(token).user_id == "u1"


def test_issuer_and_audience_ignored_when_not_configured() -> None:
    token = mint({"sub": "u1", "iss": "node-app", "aud": "whatever", "exp": now() + 600})
    assert codec().verify(token).user_id == "u1"


def test_token_issued_by_a_codec_with_issuer_is_refused_by_another_issuer() -> None:
    token, _ = codec(issuer="a").issue("u1")
    assert refused(token, codec(issuer="b")).message.startswith("Token is not for this service")


def test_messages_never_echo_the_token_or_secret() -> None:
    token = mint({"sub": "u1", "exp": now() - 600})
    for bad in (token, token + "x", hand_made({"alg": "none"}, {"sub": "u1"}, key=None)):
        err = refused(bad)
        assert bad not in err.message
        assert SECRET not in err.message


# --- bearer_token -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer abc.def.ghi", "abc.def.ghi"),
        ("BEARER abc.def.ghi", "abc.def.ghi"),
        ("  Bearer   abc.def.ghi  ", "abc.def.ghi"),
        ("Bearer x", "x"),
    ],
)
def test_bearer_token_extracts(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, ""])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(header)
    assert info.value.code == "missing_token"
    assert info.value.message == "Missing Authorization header (expected: Bearer <token>)"
    assert info.value.headers == {"WWW-Authenticate": "Bearer"}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Bearer    ",
        "   ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "abc.def.ghi",
        "Bearerabc.def.ghi",
        "JWT abc.def.ghi",
    ],
)
def test_bearer_token_wrong_form(header: str) -> None:
    with pytest.raises(Unauthorized) as info:
        bearer_token(header)
    assert info.value.code == "invalid_token"
    assert info.value.message == "Authorization header must be: Bearer <token>"


def test_bearer_token_then_verify() -> None:
    tokens = codec()
    token, _ = tokens.issue("u5")
    assert tokens.verify(bearer_token(f"Bearer {token}")).user_id == "u5"


# --- verified tokens are remembered -------------------------------------------------------


def test_a_verified_token_is_not_decoded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = codec()
    token, _ = tokens.issue("user-1")
    first = tokens.verify(token)
    calls = 0
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return real_decode(*args, **kw)

    monkeypatch.setattr(jwt, "decode", counting_decode)
    assert tokens.verify(token) == first
    assert tokens.verify(token) == first
    assert calls == 0
    # Another token (same claims, another signature) is decoded, and refused.
    head, payload, _ = token.split(".")
    forged = f"{head}.{payload}.{b64(b'x' * 32)}"
    assert refused(forged, tokens).code == "invalid_token"
    assert calls == 1
    assert forged not in tokens._verified


def test_a_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = codec()
    token = mint({"sub": "user-1", "exp": now() + 60})
    assert tokens.verify(token).user_id == "user-1"
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 60 + 4)  # within the leeway
    assert tokens.verify(token).user_id == "user-1"
    monkeypatch.setattr(time, "time", lambda: real_time() + 60 + 7)
    assert refused(token, tokens).code == "token_expired"
    assert token not in tokens._verified


def test_remembered_tokens_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import smartgen.auth.tokens as module

    monkeypatch.setattr(module, "VERIFIED_CACHE_SIZE", 8)
    tokens = codec()
    issued = [mint({"sub": f"user-{i}", "exp": now() + 60}) for i in range(20)]
    for i, token in enumerate(issued):
        assert tokens.verify(token).user_id == f"user-{i}"
    assert len(tokens._verified) == 8
    assert list(tokens._verified) == issued[-8:]
    # A forgotten token is simply verified again.
    assert tokens.verify(issued[0]).user_id == "user-0"


# --- claims' types and ranges (issue 21, item 4): a signed token is still untrusted ------


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "u1", "exp": 1e20},  # was a 500 (datetime overflow) with a traceback
        {"sub": "u1", "exp": 10**30},
        {"sub": "u1", "exp": -1},
        {"sub": "u1", "exp": str(now() + 3600)},  # was accepted, and never expired
        {"sub": "u1", "exp": True},
        {"sub": "u1", "exp": [now() + 3600]},
        {"sub": "u1", "exp": now() + 3600, "iat": "yesterday"},
        {"sub": "u1", "exp": now() + 3600, "iat": 1e20},
        {"sub": "u1", "exp": now() + 3600, "nbf": {"t": 1}},
        {"sub": ["u1"], "exp": now() + 3600},
        {"sub": {"id": "u1"}, "exp": now() + 3600},
        {"sub": True, "exp": now() + 3600},
        {"sub": 1.5, "exp": now() + 3600},
        {"sub": "u" * 129, "exp": now() + 3600},
        {"sub": "u1", "exp": now() + 3600, "jti": 7},
        {"sub": "u1", "exp": now() + 3600, "jti": "j" * 129},
    ],
)
def test_claims_of_the_wrong_type_or_range_are_refused(claims: dict[str, Any]) -> None:
    err = refused(mint(claims))
    assert err.code in ("invalid_token", "token_expired")


def test_exp_that_is_nan_or_huge_in_a_hand_made_token_is_refused() -> None:
    for exp in ("NaN", "1e400"):
        signing_input = f"{b64json({'alg': 'HS256', 'typ': 'JWT'})}." + b64(
            ('{"sub":"u1","exp":' + exp + "}").encode()
        )
        sig = b64(hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest())
        assert refused(f"{signing_input}.{sig}").code == "invalid_token"


def test_issued_tokens_carry_a_token_id() -> None:
    tokens = codec()
    first, _ = tokens.issue("u1")
    second, _ = tokens.issue("u1")
    a, b = tokens.verify(first), tokens.verify(second)
    assert a.token_id and b.token_id and a.token_id != b.token_id
    assert a.issued_at is not None and abs(a.issued_at - time.time()) < 60
