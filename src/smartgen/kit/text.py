"""Checks on text a client sends that the stores will keep, and outside text made safe
for a log line or a terminal."""

from __future__ import annotations

import re


def without_nul(value: str) -> str:
    """A pydantic validator: PostgreSQL cannot store NUL (U+0000) in text, so no store
    accepts it (all three behave alike, and a bad field is the caller's 422, never a 500
    or a failed write for anyone else's request batched with it)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


# C0 controls but tab, DEL and C1 controls: what a terminal or a log reader interprets.
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# Terminal escape sequences: CSI (ESC [ … final), OSC (ESC ] … BEL or ST, e.g. window
# titles and hyperlinks), DCS/SOS/PM/APC (… ST), and two-character escapes.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b[@-Z\\-_]?"
)


def escape_controls(text: str) -> str:
    """`text` on one line: control characters (newlines included) written as escapes
    (`\\n`, `\\x1b`), so outside text cannot forge log lines or drive a terminal."""
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def printable(text: str) -> str:
    """`text` for a terminal: escape sequences removed, other control characters but
    newline and tab removed; lone surrogates replaced."""
    text = _ESCAPES.sub("", text)
    text = re.sub(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", "", text)
    return re.sub(r"[\ud800-\udfff]", "\ufffd", text)


# Search words: runs of letters and digits (what SQLite's unicode61 tokenizer and
# PostgreSQL's parser take as words); everything else only separates them.
_WORD = re.compile(r"[^\W_]+")
SEARCH_WORDS_MAX = 16
SEARCH_WORD_CHARS = 100


def search_words(query: str) -> list[str]:
    """The words a full-text query looks for, in order, each once (case-insensitively):
    quotes, operators (`NEAR`, `OR`, `-`, `*`) and other punctuation are not syntax here,
    so no query text can change how a store's search parses. At most `SEARCH_WORDS_MAX`
    words, each cut to `SEARCH_WORD_CHARS` characters."""
    words: list[str] = []
    seen: set[str] = set()
    for match in _WORD.finditer(query):
        word = match.group()[:SEARCH_WORD_CHARS]
        if word.casefold() not in seen:
            seen.add(word.casefold())
            words.append(word)
            if len(words) == SEARCH_WORDS_MAX:
                break
    return words
