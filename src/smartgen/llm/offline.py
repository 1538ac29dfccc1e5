"""Offline drafts: a deterministic, well-structured writer used when no model is configured.

It lets the whole pipeline (delay, worker, store, events, save) run with no network and no
key. Its output says plainly that it is an offline draft, and jobs record the model
`offline/smartgen-draft`. It is never chosen when OPENROUTER_KEY is set.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable

from smartgen.models import Completion, ContentType, ModelRequest

OFFLINE_MODEL = "offline/smartgen-draft"
NOTICE = (
    "_Offline draft written by smartgen without a language model. "
    "Set OPENROUTER_KEY (or point BASE_URL at a local model server) for AI-written content._"
)


def _topic(prompt: str) -> str:
    text = " ".join(prompt.split()).strip().rstrip(".!?")
    return text[:1].upper() + text[1:] if text else "Your topic"


def _words(topic: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z0-9]+", topic.lower()) if len(w) > 3][:4] or ["ideas"]


def _pick(options: list[str], topic: str, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{topic}".encode()).digest()
    return options[digest[0] % len(options)]


def blog_post_outline(topic: str) -> str:
    angle = _pick(
        ["A practical guide", "Everything you need to know", "A step-by-step walkthrough"],
        topic,
        "a",
    )
    return f"""# {topic}: {angle}

A clear, practical post for readers who want to understand {topic.lower()} and act on it.

## Introduction
### Why {topic.lower()} matters
- The problem readers face and what they gain by the end of the post
### What this post covers
- A quick map of the sections below

## The basics
### Key terms
- Define the words a newcomer needs first
### Common misconceptions
- Two or three myths, and what is true instead

## Getting started
### What you need
- Tools, time and skills, kept to the essentials
### The first steps
- A short, ordered list the reader can follow today

## Going further
### Techniques that make the difference
- Two or three methods, each with a concrete example
### Mistakes to avoid
- The pitfalls beginners hit most, and how to spot them early

## Conclusion
### Key takeaways
- Three bullet-sized lessons to remember
### Call to action
- Invite readers to try it and share their results

{NOTICE}
"""


def product_description(topic: str) -> str:
    return f"""## {topic} — made for the way you work

Looking for something that simply does the job? {topic} is built to save you time, \
fit into your routine and keep working day after day.

- **Easy to start with** — set up in minutes, no manual needed.
- **Built to last** — quality materials and a design that holds up to daily use.
- **Thoughtful details** — small touches that make every use more pleasant.
- **Good value** — the features you need, without paying for the ones you don't.

Make {topic.lower()} part of your day — order yours now.

{NOTICE}
"""


def social_media_caption(topic: str) -> str:
    hashtags = " ".join("#" + w for w in _words(topic))
    hook = _pick(["Ever wondered about", "Let's talk about", "Here's your sign to try"], topic, "h")
    return f"""{hook} {topic.lower()}? ✨

We've gathered the essentials so you can get started today — no fluff, just what works.

Tell us in the comments what you'd try first, and share this with a friend who needs it!

{hashtags} #tips

{NOTICE}
"""


WRITERS: dict[ContentType, Callable[[str], str]] = {
    "Blog Post Outline": blog_post_outline,
    "Product Description": product_description,
    "Social Media Caption": social_media_caption,
}


class OfflineWriter:
    """A `ports.Generator` with no network."""

    model = OFFLINE_MODEL
    line_delay = 0.02  # seconds between streamed lines

    async def generate(self, request: ModelRequest) -> Completion:
        writer = WRITERS.get(request.content_type, blog_post_outline)  # type: ignore[call-overload]
        content = writer(_topic(request.prompt)).strip()
        words = len(content.split())
        return Completion(
            content=content,
            model=OFFLINE_MODEL,
            usage={
                "prompt_tokens": len(request.prompt.split()),
                "completion_tokens": words,
                "total_tokens": words,
            },
        )

    async def generate_stream(self, request: ModelRequest) -> AsyncIterator[str | Completion]:
        """The draft line by line, a moment apart, so the live text shows in a browser
        or terminal as it would with a model."""
        completion = await self.generate(request)
        for line in completion.content.splitlines(keepends=True):
            yield line
            await asyncio.sleep(self.line_delay)
        yield completion

    async def close(self) -> None:
        return None
