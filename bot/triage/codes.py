"""Finding catalogue codes in a message: written-out codes, suffixes after "error", error names, bare numbers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bot.triage.normalise import MAX_TEXT_CHARS
from bot.triage.results import Evidence

if TYPE_CHECKING:
    from bot.triage.index import TriageIndex

MAX_CODES = 10
# Scores in [0, 1]. An exact code is certain; a bare suffix after "error"/"code" almost so; a number
# alone ("my extension is 1005") is only a hint that needs the text to agree.
SCORE_FULL_CODE = 1.0
SCORE_KEYWORD_CODE = 0.97
SCORE_NAME = 0.95

# Every regex below is linear: bounded repeats, no nested quantifiers, so 50,000 digits and colons
# cost a single pass.
FULL_CODE = re.compile(r"(?<![\d.])1000[ \t]{0,3}([:;/\-–—.])[ \t]{0,3}(\d{1,4})(?![\d:])")
_SPACED_CODE = re.compile(r"(?<![\d.:])1000 {1,2}()(\d{1,4})(?![\d:])")  # () keeps groups as in FULL_CODE
# "error" and "code" in the six languages, accents folded as normalise does: Fehler, erreur, erro, errore, código,
# codice. A bare number after one of them is a catalogue suffix.
_KEYWORD_CODE = re.compile(
    r"\b(?:error|err|code|errorcode|error code|error no|error number|fehler|fehlercode|erreur|erro|errore"
    r"|codigo|codice|codigo de error|codigo de erro|codice di errore|code derreur|code d erreur)"
    r"[ \t]{0,3}[:#=]?[ \t]{0,3}(?:is |was |ist |est |es |e )?\(?(\d{1,4})(?![\d:/\-])"
)
_CODE_KEYWORD = re.compile(r"(?<![\d:/\-])(\d{1,4})\)?[ \t]{0,2}(?:error|err|fehler|erreur|erro|errore)\b")
# The literals the two patterns above need; a substring test is far cheaper than a regex scan.
_KEYWORD_LITERALS = ("err", "code", "fehler", "codi")
_BARE_NUMBER = re.compile(r"(?<![\d:/\-.])(\d{3,4})(?![\d:/\-.])")
_HAS_DIGIT = re.compile(r"\d")

# id -> (score, evidence, position in the text)
Found = dict[str, tuple[float, Evidence, int]]


def message_text(message: str) -> str:
    """An error's message without its "Error: 1000:N" tail: what people paste and paraphrase."""
    return FULL_CODE.sub(" ", message).replace("Error:", " ").replace("Error", " ")


# How far a keyword code reaches around its keyword: the longest keyword ("codigo de error") with its spaces,
# ":#=", "is/was" and four digits before or after it fits in this.
_KEYWORD_REACH = 40


def _keyword_spans(text: str) -> list[tuple[int, int]]:
    """Merged windows of the text around each occurrence of a keyword literal."""
    spans: list[tuple[int, int]] = []
    for literal in _KEYWORD_LITERALS:
        at = text.find(literal)
        while at != -1:
            spans.append((max(0, at - _KEYWORD_REACH), at + len(literal) + _KEYWORD_REACH))
            at = text.find(literal, at + 1)
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def find_codes(text: str, words: list[str], index: TriageIndex) -> tuple[Found, list[str], list[str]]:
    """Codes by id -> (score, evidence, position); the unknown full codes; bare-number hints (ids).

    `words` are the text's words (normalise.words): names are looked for in them, squeezed together."""
    found: Found = {}
    unknown: list[str] = []

    def add(article_id: str, score: float, evidence: Evidence, pos: int) -> None:
        prev = found.get(article_id)
        if prev is None or prev[0] < score:
            found[article_id] = (score, evidence, pos if prev is None else min(pos, prev[2]))

    has_digit = _HAS_DIGIT.search(text) is not None
    # Each pattern needs a literal ("1000", "err", "code"): a substring test is far cheaper than a regex scan.
    if has_digit and "1000" in text:
        for pattern in (FULL_CODE, _SPACED_CODE):
            for m in pattern.finditer(text):
                suffix = str(int(m.group(2)))
                if m.group(1) == "." and len(m.group(2)) < 3:
                    continue  # "1000.600" is a code typed with a dot; "1000.5" and "$1000.99" are amounts
                if suffix in index.suffixes:
                    add(index.suffixes[suffix], SCORE_FULL_CODE, "code", m.start())
                elif pattern is FULL_CODE and m.group(1) != "." and f"1000:{suffix}" not in unknown:
                    unknown.append(f"1000:{suffix}")
                if len(found) >= MAX_CODES:
                    break
    if has_digit:
        # Only around the keywords: scanning a long report at every position costs more than the rest of
        # triage, and a keyword code is within a few characters of its keyword by the patterns' own bounds.
        for start, end in _keyword_spans(text):
            for pattern in (_KEYWORD_CODE, _CODE_KEYWORD):
                for m in pattern.finditer(text, start, end):
                    suffix = str(int(m.group(1)))
                    if suffix in index.suffixes:
                        add(index.suffixes[suffix], SCORE_KEYWORD_CODE, "code", m.start())
    if index.names_re is not None:
        # Names are matched with spaces and punctuation squeezed out: "SSO certificate error" finds SSOCertificateError.
        compact = "".join(words)
        for m in index.names_re.finditer(compact):
            add(index.names[m.group()], SCORE_NAME, "name", m.start())
    hints: list[str] = []
    if found or not has_digit:
        return found, unknown[:MAX_CODES], hints
    for m in _BARE_NUMBER.finditer(text[:MAX_TEXT_CHARS]):
        article_id = index.suffixes.get(str(int(m.group(1))), "")
        if article_id and article_id not in hints:
            hints.append(article_id)
    return found, unknown[:MAX_CODES], hints[:MAX_CODES]
