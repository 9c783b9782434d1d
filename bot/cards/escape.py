"""Making user text inert for Webex markdown and card text, and cutting text to size."""

from __future__ import annotations

import re
import unicodedata

EXCERPT_CHARS = 200  # how much of a user's message we echo back

# What Webex markdown or Adaptive Card markdown would interpret in a person's words, replaced by characters
# that every common font has (Latin-1, WGL4, DejaVu, Liberation) and that read as what the person wrote:
# mentions and tags (<@all>, <b>), links and images ([x](y)), emphasis and code (*, _, `), strike-through (~~),
# tables (|) and backslash escapes. Full-width look-alikes (＜, ［) were tried first: without a CJK font they
# are empty boxes.
_NEUTRAL = str.maketrans(
    {
        "<": "‹",
        ">": "›",
        "[": "(",
        "]": ")",
        "*": "∗",
        "_": "ˍ",
        "`": "'",
        "\\": "∖",
        "~": "˜",
        "|": "¦",
    }
)
# Entities (&lt; &#60;): the ampersand keeps its place, a space after it ends the entity.
_ENTITY_START = re.compile(r"&(?=#|[A-Za-z]{1,32};)")
_AT_ALL = re.compile(r"@(?=all)", re.IGNORECASE)
# Webex turns bare domains and anything with a scheme into links; the bot repeating one would lend it the
# bot's authority. Defanged the way security people write them: evil(.)example(.)com, mailto(:)x, javascript(:).
# A dot between two labels, the second of two or more characters with a letter ("e.g." and "1.2.3" stay).
_DOMAIN_DOT = re.compile(r"(?<=[A-Za-z0-9-])\.(?=(?=[A-Za-z0-9-]{2})[A-Za-z0-9-]*[A-Za-z][A-Za-z0-9-]*\b)")
# A scheme: a word right before a colon and something other than a space or a digit ("Error:1000:8" stays).
_SCHEME = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]{0,30}):(?=[^\s\d])")
# A line that starts with these is a heading, quote, list or rule in markdown (a numbered list is harmless
# and "1. it broke" plain text); a no-break space before it
# (visible as a space, not whitespace to markdown) keeps it text.
_BLOCK_START = re.compile(r"^(?=[#>+\-=])")
_WHITESPACE = re.compile(r"\s+")


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a word boundary where one is near, ending in "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[: max(limit, 0)]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def escape_user_text(s: str, max_len: int, *, defang: bool = True) -> str:
    """User text made inert for Webex markdown and card text: one line, no markup, at most `max_len` characters.

    defang=False leaves domains and schemes as they are, for the bot's own text about its files ("errors.toml")."""
    # Drop control and format characters (zero-width spaces, bidi overrides) *before* matching @all,
    # so "@\u200ball" cannot reassemble into a mention after we have looked.
    visible = "".join(
        " " if ch.isspace() else ch
        for ch in s
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    text = _WHITESPACE.sub(" ", visible).strip().translate(_NEUTRAL)
    text = _ENTITY_START.sub("& ", text)
    text = _AT_ALL.sub("@\u00a0", text)
    if defang:
        text = _SCHEME.sub(r"\1(:)", text)
        text = _DOMAIN_DOT.sub("(.)", text)
    text = _BLOCK_START.sub("\u00a0", text)
    # Cutting characters off the end cannot create any of the tokens above.
    return shorten(text, max_len)
