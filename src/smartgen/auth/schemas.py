"""Request and response bodies of /auth."""

from __future__ import annotations

import re
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.kit.times import iso_ms

_EMAIL = re.compile(r"^[A-Za-z0-9._%+\-']+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}$")


class Credentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(
        max_length=254,
        examples=["ada@example.com"],
        json_schema_extra={"pattern": _EMAIL.pattern},
    )
    password: str = Field(min_length=1, max_length=256, examples=["correct horse battery"])

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        value = value.strip().lower()
        if not _EMAIL.match(value):
            raise ValueError("must be an email address")
        return value


class Registration(Credentials):
    password: str = Field(
        min_length=8,
        max_length=256,
        examples=["correct horse battery"],
        description="At least 8 characters",
    )


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currentPassword: str = Field(min_length=1, max_length=256)
    newPassword: str = Field(min_length=8, max_length=256, description="At least 8 characters")


class PasswordConfirmation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=256, description="The account's password")


class TokenResponse(BaseModel):
    token: str = Field(description="The JWT; send it as `Authorization: Bearer <token>`")
    accessToken: str = Field(description="The same token, under the OAuth2-style name")
    tokenType: str = "Bearer"
    expiresAt: str
    user: UserOut


class UserOut(BaseModel):
    id: str
    email: str
    createdAt: str


def user_out(user_id: str, email: str, created_at: datetime) -> UserOut:
    return UserOut(id=user_id, email=email, createdAt=iso_ms(created_at))


TokenResponse.model_rebuild()
