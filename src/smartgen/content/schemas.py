"""Bodies of the permanent Content collection's endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartgen.kit.text import without_nul
from smartgen.kit.times import iso_ms
from smartgen.models import Content


class SaveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str | None = Field(
        None,
        max_length=200,
        description="Optional; defaults to the content's first heading, else the prompt",
        examples=["My Sourdough Guide"],
    )

    @field_validator("title")
    @classmethod
    def _title_without_nul(cls, value: str | None) -> str | None:
        return None if value is None else without_nul(value)


class ContentOut(BaseModel):
    contentId: str
    userId: str
    jobId: str
    title: str
    body: str
    contentType: str
    prompt: str | None = None
    model: str | None = None
    createdAt: str


def content_out(content: Content) -> ContentOut:
    return ContentOut(
        contentId=content.content_id,
        userId=content.user_id,
        jobId=content.job_id,
        title=content.title,
        body=content.body,
        contentType=content.content_type,
        prompt=content.prompt,
        model=content.model,
        createdAt=iso_ms(content.created_at),
    )
