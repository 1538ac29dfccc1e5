"""Bodies of the permanent Content collection's endpoints."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartgen.kit.text import without_nul
from smartgen.kit.times import iso_ms
from smartgen.models import Content, Rating


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
    tags: list[str] = Field(default_factory=list, description="The owner's labels")
    updatedAt: str = Field(description="The last edit (createdAt until one)")


class ContentPage(BaseModel):
    items: list[ContentOut] = Field(description="Newest first (also with `q`)")
    nextCursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last one"
    )


TAGS_MAX = 20
TAG_CHARS = 40


class ContentPatch(BaseModel):
    """The fields to change; at least one."""

    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(None, min_length=1, max_length=200, examples=["Sourdough, simply"])
    body: str | None = Field(None, min_length=1, max_length=100_000, description="Markdown")
    tags: list[str] | None = Field(
        None,
        max_length=TAGS_MAX,
        description=f"Replaces the tags: at most {TAGS_MAX}, each 1–{TAG_CHARS} characters "
        "(trimmed; repeats dropped; case kept)",
        examples=[["bread", "weekend"]],
    )

    @field_validator("title", mode="before")
    @classmethod
    def _trim_title(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("title", "body")
    @classmethod
    def _without_nul(cls, value: str | None) -> str | None:
        return None if value is None else without_nul(value)

    @field_validator("tags")
    @classmethod
    def _clean_tags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        tags: list[str] = []
        for raw in value:
            tag = without_nul(raw.strip())
            if not 1 <= len(tag) <= TAG_CHARS:
                raise ValueError(f"each tag must be 1–{TAG_CHARS} characters (after trimming)")
            if tag not in tags:
                tags.append(tag)
        return tags

    @model_validator(mode="after")
    def _something(self) -> ContentPatch:
        if self.title is None and self.body is None and self.tags is None:
            raise ValueError("give at least one of title, body, tags")
        return self


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
        tags=list(content.tags),
        updatedAt=iso_ms(content.updated_at or content.created_at),
    )


COMMENT_CHARS = 2_000


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Rating
    comment: str | None = Field(None, max_length=COMMENT_CHARS, examples=["Just right"])

    @field_validator("comment")
    @classmethod
    def _comment_without_nul(cls, value: str | None) -> str | None:
        return None if value is None else without_nul(value)


class FeedbackResponse(BaseModel):
    jobId: str
    rating: Rating
    comment: str | None
    updatedAt: str
