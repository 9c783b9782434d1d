"""Making user text inert for Webex markdown and card text, and cutting text to size."""

from __future__ import annotations

import re
import unicodedata

EXCERPT_CHARS = 200  # how much of a user's message we echo back

# Look-alike characters for everything Webex markdown or Adaptive Card markdown would interpret:
# mentions (<@all>, <@personEmail:...>), HTML tags, links and images ([x](y), ![x](y)), emphasis,
# code spans, entities and headings. Look-alikes keep the text readable where backslash escapes are
# rendered inconsistently across Webex clients.
_NEUTRAL = str.maketrans(
    {
        "<": "＜",
        ">": "＞",
        "[": "［",
        "]": "］",
        "(": "（",
        ")": "）",
        "*": "＊",
        "_": "＿",
        "`": "｀",
        "\\": "＼",
        "&": "＆",
        "#": "＃",
    }
)
_AT_ALL = re.compile(r"@(?=all)", re.IGNORECASE)
# Webex turns bare URLs into links; the bot repeating a user's URL would lend it the bot's authority.
_SCHEME_SEP = re.compile(r":/+")
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


def escape_user_text(s: str, max_len: int) -> str:
    """User text made inert for Webex markdown and card text: one line, no markup, at most `max_len` characters."""
    # Drop control and format characters (zero-width spaces, bidi overrides) *before* matching @all,
    # so "@\u200ball" cannot reassemble into a mention after we have looked.
    visible = "".join(
        " " if ch.isspace() else ch
        for ch in s
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    text = _WHITESPACE.sub(" ", visible).strip().translate(_NEUTRAL)
    text = _AT_ALL.sub("＠", text)
    text = _SCHEME_SEP.sub(lambda m: ":" + "／" * (len(m.group()) - 1), text)
    # Cutting characters off the end cannot create any of the tokens above.
    return shorten(text, max_len)
