"""Bodies of /voices. Sizes are bounded: a voice goes into every system message that
applies it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartgen.kit.text import without_nul
from smartgen.kit.times import iso_ms
from smartgen.models import Voice

NAME_MAX_CHARS = 100
DESCRIPTION_MAX_CHARS = 1000
MAX_EXAMPLES = 3
EXAMPLE_MAX_CHARS = 500


def _clean(value: str | None) -> str | None:
    return None if value is None else without_nul(value)


def _raw_length(limit: int) -> Any:
    """The limit on the text as sent, before surrounding spaces are trimmed (the schema's
    maxLength describes what is sent)."""

    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    return check


def _raw_lengths(limit: int) -> Any:
    """`_raw_length` for each text of a list."""
    one = _raw_length(limit)

    def check(value: Any) -> Any:
        if isinstance(value, list):
            for item in value:
                one(item)
        return value

    return check


# Not blank (the schema says so with a pattern, so that a client generated from it knows):
# at least one character that is not a space.
NOT_BLANK = r"\S"
Example = Annotated[str, Field(max_length=EXAMPLE_MAX_CHARS, pattern=NOT_BLANK)]


def _examples(value: list[str] | None) -> list[str] | None:
    if value is None:
        return None
    out = []
    for example in value:
        example = without_nul(example).strip()
        if not example:
            raise ValueError("an example must not be blank")
        if len(example) > EXAMPLE_MAX_CHARS:
            raise ValueError(f"each example must be at most {EXAMPLE_MAX_CHARS} characters")
        out.append(example)
    return out


class VoiceCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(
        min_length=1, max_length=NAME_MAX_CHARS, pattern=NOT_BLANK, examples=["Cosy bakery"]
    )
    description: str = Field(
        "",
        max_length=DESCRIPTION_MAX_CHARS,
        description="How the brand sounds",
        examples=["Warm, plain words; short sentences; a wink of humour"],
    )
    examples: list[Example] = Field(
        default_factory=list,
        max_length=MAX_EXAMPLES,
        description=f"At most {MAX_EXAMPLES} short texts in the voice, each at most "
        f"{EXAMPLE_MAX_CHARS} characters",
        examples=[["Fresh from the oven, just for you."]],
    )

    _name = field_validator("name", "description")(_clean)
    _examples = field_validator("examples")(_examples)
    _examples_sent = field_validator("examples", mode="before")(_raw_lengths(EXAMPLE_MAX_CHARS))
    _name_sent = field_validator("name", mode="before")(_raw_length(NAME_MAX_CHARS))
    _description_sent = field_validator("description", mode="before")(
        _raw_length(DESCRIPTION_MAX_CHARS)
    )


class VoiceUpdate(BaseModel):
    """The fields to change; at least one."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str | None = Field(None, min_length=1, max_length=NAME_MAX_CHARS, pattern=NOT_BLANK)
    description: str | None = Field(None, max_length=DESCRIPTION_MAX_CHARS)
    examples: list[Example] | None = Field(None, max_length=MAX_EXAMPLES)

    _name = field_validator("name", "description")(_clean)
    _examples = field_validator("examples")(_examples)
    _examples_sent = field_validator("examples", mode="before")(_raw_lengths(EXAMPLE_MAX_CHARS))
    _name_sent = field_validator("name", mode="before")(_raw_length(NAME_MAX_CHARS))
    _description_sent = field_validator("description", mode="before")(
        _raw_length(DESCRIPTION_MAX_CHARS)
    )

    @model_validator(mode="after")
    def _something(self) -> VoiceUpdate:
        if self.name is None and self.description is None and self.examples is None:
            raise ValueError("give at least one of name, description, examples")
        return self


class VoiceOut(BaseModel):
    voiceId: str
    name: str
    description: str
    examples: list[str]
    createdAt: str
    updatedAt: str


def voice_out(voice: Voice) -> VoiceOut:
    return VoiceOut(
        voiceId=voice.voice_id,
        name=voice.name,
        description=voice.description,
        examples=voice.examples,
        createdAt=iso_ms(voice.created_at),
        updatedAt=iso_ms(voice.updated_at),
    )
