"""Offline drafts: a deterministic, well-structured writer used when no model is configured.

It lets the whole pipeline (delay, worker, store, events, save) run with no network and no
key. Its output says plainly that it is an offline draft, and jobs record the model
`offline/smartgen-draft`. It is never chosen when OPENROUTER_KEY is set.

It honours a job's options, so the embedded run shows them working: the tone sets the
opening line, the length the number of sections or points, the language the headings'
wording (English, German, Spanish, French; any other language is marked untranslated),
keywords are worked into the text and the hashtags, and a variation takes another angle.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from smartgen.models import Completion, ContentType, ModelRequest

OFFLINE_MODEL = "offline/smartgen-draft"
NOTICE = (
    "_Offline draft written by smartgen without a language model. "
    "Set OPENROUTER_KEY (or point BASE_URL at a local model server) for AI-written content._"
)

# The wording the drafts' headings and fixed lines use, per language (the first subtag).
WORDS: dict[str, dict[str, str]] = {
    "en": {
        "intro": "Introduction", "basics": "The basics", "start": "Getting started",
        "further": "Going further", "examples": "Examples and case studies", "faq": "FAQ",
        "conclusion": "Conclusion", "takeaways": "Key takeaways", "cta": "Call to action",
        "buy": "order yours now", "comment": "Tell us in the comments what you'd try first!",
    },
    "de": {
        "intro": "Einleitung", "basics": "Die Grundlagen", "start": "Erste Schritte",
        "further": "Weiterführendes", "examples": "Beispiele und Fallstudien", "faq": "FAQ",
        "conclusion": "Fazit", "takeaways": "Das Wichtigste", "cta": "Handlungsaufruf",
        "buy": "jetzt bestellen",
        "comment": "Schreib uns in die Kommentare, was du zuerst ausprobierst!",
    },
    "es": {
        "intro": "Introducción", "basics": "Lo básico", "start": "Primeros pasos",
        "further": "Más allá", "examples": "Ejemplos y casos", "faq": "Preguntas frecuentes",
        "conclusion": "Conclusión", "takeaways": "Ideas clave", "cta": "Llamada a la acción",
        "buy": "pide el tuyo ahora",
        "comment": "¡Cuéntanos en los comentarios qué probarías primero!",
    },
    "fr": {
        "intro": "Introduction", "basics": "Les bases", "start": "Premiers pas",
        "further": "Aller plus loin", "examples": "Exemples et études de cas", "faq": "FAQ",
        "conclusion": "Conclusion", "takeaways": "À retenir", "cta": "Appel à l'action",
        "buy": "commandez le vôtre",
        "comment": "Dites-nous en commentaire ce que vous essaieriez d'abord !",
    },
}  # fmt: skip

OPENERS: dict[str, str] = {
    "professional": "A concise, professional overview",
    "friendly": "A friendly, practical guide",
    "playful": "A fun, light-hearted tour",
    "persuasive": "Why you should care, and act today",
    "informative": "A clear, factual explainer",
    "bold": "No fluff, just what works",
}
POINTS = {"short": 2, "medium": 4, "long": 6}  # product bullet points per length


@dataclass(frozen=True, slots=True)
class Draft:
    """What the writers read from a request."""

    topic: str
    tone: str | None
    length: str
    words: dict[str, str]
    untranslated: str | None  # a language the drafts have no words for
    keywords: list[str]
    voice: str | None
    variation: bool


def _topic(prompt: str) -> str:
    text = " ".join(prompt.split()).strip().rstrip(".!?")
    return text[:1].upper() + text[1:] if text else "Your topic"


def _words(topic: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z0-9]+", topic.lower()) if len(w) > 3][:4] or ["ideas"]


def _pick(options: list[str], topic: str, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{topic}".encode()).digest()
    return options[digest[0] % len(options)]


def draft_of(request: ModelRequest) -> Draft:
    options: dict[str, Any] = request.options or {}
    language = str(options.get("language") or "en")
    primary = language.split("-")[0].lower()
    voice = options.get("voice")
    return Draft(
        topic=_topic(request.prompt),
        tone=options.get("tone"),
        length=str(options.get("length") or "medium"),
        words=WORDS.get(primary, WORDS["en"]),
        untranslated=None if primary in WORDS else language,
        keywords=[str(k) for k in options.get("keywords") or []],
        voice=str(voice.get("name")) if isinstance(voice, dict) else None,
        variation=request.previous is not None,
    )


def _opening(d: Draft, choices: list[str], salt: str) -> str:
    if d.tone in OPENERS:
        return OPENERS[d.tone]
    return _pick(choices, d.topic + ("+" if d.variation else ""), salt)


def blog_post_outline(d: Draft) -> str:
    w, topic = d.words, d.topic
    angle = _opening(
        d, ["A practical guide", "Everything you need to know", "A step-by-step walkthrough"], "a"
    )
    terms = "".join(f"- **{k}**: what it means here, and why it matters\n" for k in d.keywords)
    terms = terms or "- Define the words a newcomer needs first\n"
    sections = [
        f"## {w['intro']}\n### Why {topic.lower()} matters\n"
        "- The problem readers face and what they gain by the end of the post\n",
        f"## {w['basics']}\n### Key terms\n{terms}",
        f"## {w['start']}\n### The first steps\n"
        "- A short, ordered list the reader can follow today\n",
    ]
    if d.length != "short":
        sections.append(
            f"## {w['further']}\n### Techniques that make the difference\n"
            "- Two or three methods, each with a concrete example\n"
            "### Mistakes to avoid\n- The pitfalls beginners hit most, and how to spot them\n"
        )
    if d.length == "long":
        sections.append(f"## {w['examples']}\n### A worked example\n- One case, start to finish\n")
        sections.append(
            f"## {w['faq']}\n### Three questions readers ask\n- Short, direct answers\n"
        )
    sections.append(
        f"## {w['conclusion']}\n### {w['takeaways']}\n- Three bullet-sized lessons to remember\n"
        f"### {w['cta']}\n- Invite readers to try it and share their results\n"
    )
    body = "\n".join(sections)
    return (
        f"# {topic}: {angle}\n\n"
        f"A clear, practical post for readers who want to understand {topic.lower()} and act "
        f"on it.\n\n{body}"
    )


def product_description(d: Draft) -> str:
    topic, w = d.topic, d.words
    points = [
        "**Easy to start with** — set up in minutes, no manual needed.",
        "**Built to last** — quality materials and a design that holds up to daily use.",
        "**Thoughtful details** — small touches that make every use more pleasant.",
        "**Good value** — the features you need, without paying for the ones you don't.",
        "**Backed by care** — help is one message away whenever you need it.",
        "**Made to share** — a gift that people actually use.",
    ]
    points = [f"**{k}** — right where you need it." for k in d.keywords] + points
    bullets = "\n".join(f"- {p}" for p in points[: POINTS.get(d.length, 4)])
    opening = _opening(
        d, ["Looking for something that simply does the job?", "Made for the way you work."], "p"
    )
    return f"""## {topic} — {opening.rstrip(".?").lower()}

{opening} {topic} is built to save you time, fit into your routine and keep working day \
after day.

{bullets}

{topic} — {w["buy"]}."""


def social_media_caption(d: Draft) -> str:
    topic = d.topic
    tags = [*(re.sub(r"\W+", "", k.lower()) for k in d.keywords), *_words(topic)]
    hashtags = " ".join("#" + t for t in dict.fromkeys(t for t in tags if t))
    hook = _opening(d, ["Ever wondered about", "Let's talk about", "Here's your sign to try"], "h")
    middle = (
        ""
        if d.length == "short"
        else "\nWe've gathered the essentials so you can get started today — no fluff, just "
        "what works.\n"
    )
    if d.length == "long":
        middle += "Save this post for later, and come back when you're ready for step two.\n"
    return f"""{hook}: {topic.lower()} ✨
{middle}
{d.words["comment"]}

{hashtags} #tips"""


WRITERS: dict[ContentType, Callable[[Draft], str]] = {
    "Blog Post Outline": blog_post_outline,
    "Product Description": product_description,
    "Social Media Caption": social_media_caption,
}


def write(request: ModelRequest) -> str:
    d = draft_of(request)
    writer = WRITERS.get(request.content_type, blog_post_outline)  # type: ignore[call-overload]
    text = str(writer(d)).strip()
    notes = []
    if d.keywords:
        notes.append("_Keywords worked in: " + ", ".join(d.keywords) + "._")
    if d.voice:
        notes.append(f"_Brand voice: {d.voice}._")
    if d.untranslated:
        notes.append(f"_Untranslated: offline drafts have no words for {d.untranslated}._")
    notes.append(NOTICE)
    return text + "\n\n" + "\n".join(notes)


class OfflineWriter:
    """A `ports.Generator` with no network."""

    model = OFFLINE_MODEL
    line_delay = 0.02  # seconds between streamed lines

    async def generate(self, request: ModelRequest) -> Completion:
        content = write(request)
        words = len(content.split())
        prompt_tokens = len(request.prompt.split())
        return Completion(
            content=content,
            model=OFFLINE_MODEL,
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": words,
                "total_tokens": prompt_tokens + words,
                "cost": 0,
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
