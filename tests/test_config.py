"""Settings from the environment: Redis/Mongo addresses, checks, and one-line ConfigErrors."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.connection import parse_url

from smartgen.config import (
    DEFAULT_MODEL,
    MIN_SECRET_LENGTH,
    OPENROUTER_BASE_URL,
    ConfigError,
    Settings,
    load_settings,
)

STRONG_SECRET = "9f8e7d6c5b4a39281706f5e4d3c2b1a0" + "ffeeddccbbaa9988"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting from the developer's environment or a stray `.env` leaks into a test."""
    fields = {name.lower() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.lower() in fields:
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Settings read from exactly these environment variables."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return load_settings(_env_file=None)


# --- defaults -----------------------------------------------------------------------------


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert s.redis_connection_url == "redis://127.0.0.1:6379/0"
    assert s.base_url == OPENROUTER_BASE_URL
    assert s.openrouter_model == DEFAULT_MODEL
    assert s.port == 5000
    assert s.cors_origins == []
    assert s.mongo_database == "smartgen"
    assert s.llm_is_local is False


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, openrouter_model="vendor/model-x", Port="5050")
    assert s.openrouter_model == "vendor/model-x"
    assert s.port == 5050


def test_dotenv_file_is_read_and_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("OPENROUTER_MODEL=from/dotenv\nPORT=6001\n")
    monkeypatch.setenv("PORT", "6002")
    s = load_settings()  # reads ./.env (the test's own temporary directory)
    assert s.openrouter_model == "from/dotenv"
    assert s.port == 6002
    assert load_settings(_env_file=None).openrouter_model == DEFAULT_MODEL


# --- Redis --------------------------------------------------------------------------------


def test_redis_from_endpoint_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="redis-1.example.com", REDIS_PORT="12345")
    assert s.redis_connection_url == "redis://redis-1.example.com:12345/0"


def test_redis_endpoint_without_port_uses_6379(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="redis-1.example.com")
    assert s.redis_connection_url == "redis://redis-1.example.com:6379/0"


def test_redis_port_without_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_PORT="6380")
    assert s.redis_connection_url == "redis://127.0.0.1:6380/0"


def test_redis_user_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        REDIS_ENDPOINT="cache.example.com",
        REDIS_PORT="16379",
        REDIS_USER="default",
        REDIS_PASSWORD="s3cret",
    )
    assert s.redis_connection_url == "redis://default:s3cret@cache.example.com:16379/0"


def test_redis_password_with_special_characters_is_quoted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    password = "p@ss:w/rd#?%& +="
    user = "app user@x"
    s = settings(
        monkeypatch,
        REDIS_ENDPOINT="cache.example.com",
        REDIS_PORT="16379",
        REDIS_USER=user,
        REDIS_PASSWORD=password,
    )
    url = s.redis_connection_url
    assert url == (
        "redis://app%20user%40x:p%40ss%3Aw%2Frd%23%3F%25%26%20%2B%3D@cache.example.com:16379/0"
    )
    # The URL parses back to the same parts, in urllib and in redis-py.
    parts = urlsplit(url)
    assert (parts.hostname, parts.port, parts.path) == ("cache.example.com", 16379, "/0")
    parsed = parse_url(url)
    assert parsed["username"] == user
    assert parsed["password"] == password
    assert parsed["host"] == "cache.example.com"
    assert parsed["port"] == 16379


def test_redis_password_without_user(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="h.example.com", REDIS_PASSWORD="pw/1")
    assert s.redis_connection_url == "redis://:pw%2F1@h.example.com:6379/0"
    parsed = parse_url(s.redis_connection_url)
    assert parsed["password"] == "pw/1"
    assert parsed.get("username") in (None, "")


def test_redis_user_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="h.example.com", REDIS_USER="reader")
    assert s.redis_connection_url == "redis://reader@h.example.com:6379/0"


def test_redis_host_port_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis Cloud shows its endpoint as host:port; REDIS_PORT may then be absent."""
    s = settings(monkeypatch, REDIS_ENDPOINT="redis-1.c1.cloud.redislabs.com:18000")
    assert s.redis_connection_url == "redis://redis-1.c1.cloud.redislabs.com:18000/0"


def test_redis_host_port_endpoint_and_the_same_port(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="r.example.com:18000", REDIS_PORT="18000")
    assert s.redis_connection_url == "redis://r.example.com:18000/0"


def test_redis_port_wins_over_port_in_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="r.example.com:18000", REDIS_PORT="18001")
    assert s.redis_connection_url == "redis://r.example.com:18001/0"


@pytest.mark.parametrize(
    ("endpoint", "port", "url"),
    [
        ("[::1]:6380", None, "redis://[::1]:6380/0"),
        ("[::1]", None, "redis://[::1]:6379/0"),
        ("[::1]", "6390", "redis://[::1]:6390/0"),
        ("::1", None, "redis://[::1]:6379/0"),
        ("fd00::5", "7000", "redis://[fd00::5]:7000/0"),
        ("  spaced.example.com  ", None, "redis://spaced.example.com:6379/0"),
    ],
)
def test_redis_endpoint_forms(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, port: str | None, url: str
) -> None:
    env = {"REDIS_ENDPOINT": endpoint}
    if port:
        env["REDIS_PORT"] = port
    s = settings(monkeypatch, **env)
    assert s.redis_connection_url == url
    assert urlsplit(s.redis_connection_url).port is not None  # a URL that parses


def test_redis_endpoint_with_a_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="r.example.com:abc")
    with pytest.raises(ConfigError, match=r"^REDIS_ENDPOINT: 'abc' is not a port number$"):
        _ = s.redis_connection_url


def test_redis_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        REDIS_ENDPOINT="r.example.com:18000",
        REDIS_PASSWORD="pw",
        REDIS_TLS="true",
    )
    assert s.redis_connection_url == "rediss://:pw@r.example.com:18000/0"
    assert s.redis_display == "rediss://r.example.com:18000/0"


def test_redis_url_wins_over_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        REDIS_URL="rediss://u:p@primary.example.com:7000/2",
        REDIS_ENDPOINT="ignored.example.com",
        REDIS_PORT="1234",
        REDIS_USER="x",
        REDIS_PASSWORD="y",
    )
    assert s.redis_connection_url == "rediss://u:p@primary.example.com:7000/2"


def test_redis_display_hides_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        REDIS_ENDPOINT="cache.example.com",
        REDIS_PORT="16379",
        REDIS_USER="admin-user",
        REDIS_PASSWORD="Very$ecret!",
    )
    assert "Very" in s.redis_connection_url  # the real URL carries it ...
    assert s.redis_display == "redis://cache.example.com:16379/0"  # ... the display does not
    assert "admin-user" not in s.redis_display


def test_redis_display_of_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_URL="redis://user:hunter2@db.example.com/3")
    assert s.redis_display == "redis://db.example.com:6379/3"
    assert "hunter2" not in s.redis_display


def test_redis_display_of_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, REDIS_ENDPOINT="[::1]:6380", REDIS_PASSWORD="pw")
    assert s.redis_display == "redis://[::1]:6380/0"


# --- LLM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "local"),
    [
        ("http://localhost:11434/v1", True),
        ("http://LOCALHOST:11434/v1", True),
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.0.0.2:8080/v1", True),
        ("http://[::1]:8000/v1", True),
        ("https://openrouter.ai/api/v1", False),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5:11434/v1", False),
        ("http://localhost.example.com/v1", False),
        ("http://0.0.0.0:11434/v1", False),
    ],
)
def test_llm_is_local(monkeypatch: pytest.MonkeyPatch, base_url: str, local: bool) -> None:
    assert settings(monkeypatch, BASE_URL=base_url).llm_is_local is local


def test_base_url_trailing_slash_is_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, BASE_URL="http://127.0.0.1:1/v1/").base_url == (
        "http://127.0.0.1:1/v1"
    )


def test_require_llm_credentials_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, OPENROUTER_KEY="sk-or-v1-abc", LLM_PROVIDER="openai")
    s.require_llm_credentials()  # no error


def test_require_llm_credentials_local_server_needs_no_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = settings(monkeypatch, BASE_URL="http://127.0.0.1:11434/v1", LLM_PROVIDER="openai")
    s.require_llm_credentials()  # no error


def test_require_llm_credentials_missing_key(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, LLM_PROVIDER="openai")
    with pytest.raises(ConfigError) as info:
        s.require_llm_credentials()
    assert str(info.value).startswith("OPENROUTER_KEY is not set")
    assert "BASE_URL" in str(info.value)


def test_no_key_and_auto_provider_means_offline_drafts(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert s.use_offline_llm is True
    s.require_llm_credentials()  # no error: offline drafts need no key
    assert settings(monkeypatch, OPENROUTER_KEY="sk-or-v1-abc").use_offline_llm is False


# --- MongoDB ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "database"),
    [
        ("mongodb://127.0.0.1:27017/contentdb", "contentdb"),
        ("mongodb://u:p@h1:27017,h2:27017/app?replicaSet=rs0&authSource=admin", "app"),
        ("mongodb+srv://u:p@cluster0.abcde.mongodb.net/prod?retryWrites=true", "prod"),
        ("mongodb://127.0.0.1:27017", "smartgen"),
        ("mongodb://127.0.0.1:27017/", "smartgen"),
        ("mongodb://127.0.0.1:27017/?authSource=admin", "smartgen"),
    ],
)
def test_mongo_database_from_uri(monkeypatch: pytest.MonkeyPatch, uri: str, database: str) -> None:
    s = settings(monkeypatch, MONGO_URI=uri)
    assert s.mongo_database == database


def test_mongo_db_overrides_the_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, MONGO_URI="mongodb://h/fromuri", MONGO_DB="explicit")
    assert s.mongo_database == "explicit"


def test_mongo_database_default_without_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch).mongo_database == "smartgen"


# --- JWT secret ---------------------------------------------------------------------------


def test_require_jwt_secret_strong(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, JWT_SECRET=STRONG_SECRET).require_jwt_secret() == STRONG_SECRET


def test_require_jwt_secret_exactly_minimum_length(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "a1b2c3d4" * (MIN_SECRET_LENGTH // 8)
    assert len(secret) == MIN_SECRET_LENGTH
    assert settings(monkeypatch, JWT_SECRET=secret).require_jwt_secret() == secret


@pytest.mark.parametrize("env", [{}, {"JWT_SECRET": ""}])
def test_require_jwt_secret_missing(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        settings(monkeypatch, **env).require_jwt_secret()
    message = str(info.value)
    assert message.startswith("JWT_SECRET is not set")
    assert str(MIN_SECRET_LENGTH) in message


def test_insecure_flag_does_not_excuse_a_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"^JWT_SECRET is not set"):
        settings(monkeypatch, ALLOW_INSECURE_SECRET="true").require_jwt_secret()


@pytest.mark.parametrize(
    "secret", ["short", "a" * (MIN_SECRET_LENGTH - 1), "secret", "changeme", "CHANGE-ME"]
)
def test_require_jwt_secret_weak(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(monkeypatch, JWT_SECRET=secret).require_jwt_secret()
    message = str(info.value)
    assert message.startswith("JWT_SECRET is too weak")
    assert "ALLOW_INSECURE_SECRET" in message
    assert secret not in message  # the secret itself is never printed


@pytest.mark.parametrize("flag", ["true", "1", "yes"])
def test_allow_insecure_secret(monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    s = settings(monkeypatch, JWT_SECRET="dev", ALLOW_INSECURE_SECRET=flag)
    assert s.require_jwt_secret() == "dev"


# --- load_settings errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("JOB_ATTEMPTS", "0"),
        ("LLM_TIMEOUT_SECONDS", "0"),
        ("LLM_TEMPERATURE", "3"),
        ("GENERATION_DELAY_SECONDS", "soon"),
        ("REDIS_PORT", "six"),
        ("REDIS_TLS", "maybe"),
    ],
)
def test_bad_value_is_a_config_error_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert "\n" not in message
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ is True


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"^PORT: "):
        load_settings(_env_file=None, port="abc")


# --- CORS ---------------------------------------------------------------------------------


def test_cors_origins_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, CORS_ORIGINS=" https://app.example.com, http://localhost:3000 ,, ")
    assert s.cors_origins == ["https://app.example.com", "http://localhost:3000"]


def test_cors_origins_single(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, CORS_ORIGINS="https://app.example.com")
    assert s.cors_origins == ["https://app.example.com"]


def test_cors_origins_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch, CORS_ORIGINS='["https://a.example.com", "https://b.example.com"]')
    assert s.cors_origins == ["https://a.example.com", "https://b.example.com"]


def test_cors_origins_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    assert settings(monkeypatch, CORS_ORIGINS="").cors_origins == []


def test_cors_origins_bad_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ORIGINS", '["https://a.example.com",')
    with pytest.raises(ConfigError, match=r"^CORS_ORIGINS: "):
        load_settings(_env_file=None)


def test_cors_origins_as_keyword() -> None:
    assert Settings(_env_file=None, cors_origins="a,b").cors_origins == ["a", "b"]
    assert Settings(_env_file=None, cors_origins=["x"]).cors_origins == ["x"]


# --- process tuning -----------------------------------------------------------------------


def test_fastapi_telemetry_is_off_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect

    from fastapi import FastAPI

    from smartgen.api.app import _telemetry_option

    off = settings(monkeypatch, JWT_SECRET=STRONG_SECRET)
    on = settings(monkeypatch, JWT_SECRET=STRONG_SECRET, OTEL_ENABLED="true")
    assert off.otel_enabled is False and on.otel_enabled is True
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        assert _telemetry_option(off) == _telemetry_option(on) == {}
        return
    assert _telemetry_option(off) == {
        "telemetry": {"tracing": False, "metrics": False, "logs": False}
    }
    assert _telemetry_option(on) == {"telemetry": {}}
    # FastAPI accepts both, and the default asks no OTel provider anything per request.
    quiet = FastAPI(**_telemetry_option(off))
    assert quiet._native_telemetry.enabled() is False
    FastAPI(**_telemetry_option(on))


def test_settle_heap_freezes_start_up_objects() -> None:
    import gc

    from smartgen.server.heap import settle_heap

    threshold = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] >= 10_000
        assert gc.isenabled()  # cycles among new objects are still collected
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


# --- Redis Sentinel and operations --------------------------------------------------------


def test_redis_sentinels(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(
        monkeypatch,
        REDIS_SENTINELS=" s1.internal:26379, 10.0.0.2 ,[::1]:26380,",
        REDIS_SENTINEL_MASTER="cache",
        REDIS_PASSWORD="data-pass",
        REDIS_SENTINEL_PASSWORD="sentinel-pass",
    )
    assert s.sentinel_addresses == [("s1.internal", 26379), ("10.0.0.2", 26379), ("::1", 26380)]
    assert s.redis_display == "sentinel://s1.internal:26379,10.0.0.2:26379,[::1]:26380/cache"
    assert "pass" not in s.redis_display
    assert s.redis_sentinel_password == "sentinel-pass"
    assert settings(monkeypatch, REDIS_SENTINELS="  ").sentinel_addresses == []
    monkeypatch.delenv("REDIS_SENTINEL_MASTER")
    assert settings(monkeypatch).redis_sentinel_master == "mymaster"


@pytest.mark.parametrize("bad", ["host:port", "host:99999", ":26379", "[::1]:x", "[]:1"])
def test_redis_sentinels_refused(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^REDIS_SENTINELS: Value error, "):
        settings(monkeypatch, REDIS_SENTINELS=bad)


def test_operations_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = settings(monkeypatch)
    assert (s.log_format, s.metrics_enabled, s.metrics_token, s.metrics_port) == (
        "text",
        True,
        None,
        None,
    )
    s = settings(monkeypatch, LOG_FORMAT="json", METRICS_ENABLED="false", METRICS_PORT="9464")
    assert (s.log_format, s.metrics_enabled, s.metrics_port) == ("json", False, 9464)
    with pytest.raises(ConfigError, match=r"^LOG_FORMAT: "):
        settings(monkeypatch, LOG_FORMAT="xml")


def test_every_setting_is_in_env_example() -> None:
    """`.env.example` lists every setting (commented out, with its default or an example)."""
    text = (Path(__file__).resolve().parent.parent / ".env.example").read_text()
    listed = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    missing = {name.upper() for name in Settings.model_fields} - listed
    assert not missing, f"not in .env.example: {sorted(missing)}"


def test_a_worker_is_not_declared_dead_after_one_late_beat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings(monkeypatch).worker_dead_after_seconds == 4.0
    with pytest.raises(ConfigError, match="WORKER_DEAD_AFTER_SECONDS must be at least twice"):
        settings(monkeypatch, WORKER_HEARTBEAT_SECONDS="3", WORKER_DEAD_AFTER_SECONDS="5")
    # Beats off: no constraint.
    assert settings(monkeypatch, WORKER_HEARTBEAT_SECONDS="0").worker_heartbeat_seconds == 0
