"""Bodies of /api-keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.kit.text import without_nul
from smartgen.kit.times import as_utc, iso_ms, utcnow
from smartgen.models import ApiKey

NAME_MAX_CHARS = 100
Scope = Literal["generate", "read", "library", "webhooks"]


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=NAME_MAX_CHARS, examples=["Nightly CMS import"])
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=4,
        description="What the key may do: generate (queue and control jobs), read (jobs, "
        "contents, usage, events, voices), library (save contents, change voices), "
        "webhooks (manage /webhooks)",
        examples=[["generate", "read"]],
    )
    expiresAt: datetime | None = Field(
        None, description="An ISO 8601 time in the future (with its offset); none: no expiry"
    )

    @field_validator("name")
    @classmethod
    def _clean(cls, value: str) -> str:
        value = without_nul(value).strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("scopes")
    @classmethod
    def _unique(cls, value: list[Scope]) -> list[Scope]:
        return sorted(set(value))

    @field_validator("expiresAt")
    @classmethod
    def _future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("must name its time zone (e.g. 2030-01-01T00:00:00Z)")
        if as_utc(value) <= utcnow():
            raise ValueError("must be in the future")
        return as_utc(value)


class ApiKeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The first characters after sg_, to tell keys apart")
    scopes: list[str]
    createdAt: str
    lastUsedAt: str | None
    expiresAt: str | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The key itself (sg_…): shown this once, never again")


def key_out(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(**_fields(key))


def key_created(key: ApiKey, secret: str) -> ApiKeyCreated:
    return ApiKeyCreated(**_fields(key), key=secret)


def _fields(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.key_id,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scopes,
        "createdAt": iso_ms(key.created_at),
        "lastUsedAt": iso_ms(key.last_used_at) if key.last_used_at else None,
        "expiresAt": iso_ms(key.expires_at) if key.expires_at else None,
    }
