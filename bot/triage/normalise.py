"""Text to words: casefolding, cleaning, synonyms, stop words and stemming, driven by the knowledge's word lists."""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import Stemmer

from bot.knowledge import WordLists

# Work caps: a pasted log must not cost more than a normal message. Codes are scanned over a longer
# prefix than the fuzzy text match because people paste a whole dialog and the code sits at the end.
MAX_CODE_SCAN_CHARS = 20_000
MAX_TEXT_CHARS = 2_000
MAX_TOKENS = 80

# Every regex below is linear: bounded repeats, no nested quantifiers, so 50,000 digits and colons
# cost a single pass.
TOKEN = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_HOST = re.compile(r"\b([a-z0-9]{1,30})\.([a-z0-9]{1,30})\.com\b")
_CODE_CHARS = re.compile(r"[\d:;/\-–—]")
_CODE_TAIL = re.compile(r"[\d\s:;/\-–—]{1,40}$")

# Control characters and markdown punctuation become spaces; curly quotes become straight ones.
_CLEAN = {c: " " for c in range(32) if c not in (9, 10)} | {127: " "}
_CLEAN |= {ord(c): " " for c in '*_`~#>|[](){}<>"\\'}
_CLEAN |= {ord("’"): "'", ord("‘"): "'", ord("“"): " ", ord("”"): " "}
# Invisible format characters (zero-width spaces and joiners, bidi marks, BOM, soft hyphen) are dropped,
# not spaced: pasted from chat clients they sit inside codes ("1000\u200b:1002") and words.
_INVISIBLE = [0x00AD, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F)]
_INVISIBLE += [*range(0x2060, 0x2065), *range(0x2066, 0x2070), *range(0xFFF9, 0xFFFC)]
_CLEAN |= dict.fromkeys(_INVISIBLE)
# Accents are optional: people type "contrasena", "senha expirada" and "geandert". German umlauts fold the way
# Germans write them without the keys ("geaendert"); other marks are dropped after decomposition.
_UMLAUTS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue"})
_SNOWBALL = {"de": "german", "fr": "french", "es": "spanish", "pt": "portuguese", "it": "italian"}


def normalize(text: str) -> str:
    """Casefold, NFKC, strip control characters and markdown (synonyms come later, on words)."""
    if len(text) > MAX_CODE_SCAN_CHARS:
        cut = text[:MAX_CODE_SCAN_CHARS]
        if _CODE_CHARS.match(text, MAX_CODE_SCAN_CHARS):
            # A code straddles the cap: drop its first half rather than read "1000:10" as another code.
            cut = cut[:-60] + _CODE_TAIL.sub("", cut[-60:])
        text = cut
    if text.isascii():
        # Most messages: NFKC leaves ASCII as it is and casefold() is lower(); skip the Unicode passes.
        return text.lower().translate(_CLEAN)
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_CLEAN).translate(_UMLAUTS)
    if folded.isascii():
        return folded
    decomposed = unicodedata.normalize("NFKD", folded)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(norm: str) -> list[str]:
    """The words of normalised text; triage splits a message once and every step reads this list."""
    # "you're" -> "youre" keeps contractions one word, so the synonym table only needs "cant".
    text = norm[:MAX_TEXT_CHARS].replace("'", "")
    if ".com" in text:
        # A host name is one word, and a telling one: "teams.webex.com" is the SP-initiated start page,
        # "signin.webex.com" the sign-in page, where "teams", "webex" and "com" on their own say nothing.
        text = _HOST.sub(r"\1\2", text)
    return TOKEN.findall(text)


def split_name(name: str) -> list[str]:
    """ "ServiceDiscoveryNoSRVRecordsFound" -> ["service", "discovery", "no", "srv", "records", "found"]."""
    return [p.lower() for p in _CAMEL.findall(name)]


@functools.lru_cache(maxsize=8192)
def stem(token: str) -> str:
    # A deliberately tiny stemmer: enough for "connected/connecting", "services/service", "expired/expires".
    if len(token) > 4 and token.endswith("s") and not token.endswith("ss"):
        token = token[:-1]
    if len(token) > 5 and token.endswith("ing"):
        token = _undouble(token[:-3])
    elif len(token) > 4 and token.endswith("ed"):
        token = _undouble(token[:-2])
    if len(token) > 4 and token.endswith("e"):
        token = token[:-1]
    return token


def _undouble(stem: str) -> str:
    # "stopped" -> "stop", "logged" -> "log"; not l, s or z, which English doubles in the word itself ("call", "pass").
    if len(stem) > 2 and stem[-1] == stem[-2] and stem[-1] not in "aeioulsz":
        return stem[:-1]
    return stem


def _snowball(algorithm: str) -> Callable[[str], str]:
    stemmer = Stemmer.Stemmer(algorithm)  # keeps its own cache of recent words
    word: Callable[[str], str] = stemmer.stemWord
    return word


@dataclass(frozen=True, slots=True)
class Lexicon:
    """The word lists (knowledge/words.toml) in the shape the hot path reads: synonyms keyed by word tuples."""

    stopwords: frozenset[str]
    webex_words: frozenset[str]
    synonyms: Mapping[tuple[str, ...], tuple[str, ...]]
    synonym_starts: frozenset[str]
    synonym_max: int
    stem: Callable[[str], str] = stem
    lang: str = "en"

    @classmethod
    def from_words(cls, lists: WordLists, lang: str = "en") -> Lexicon:
        """English, or a language's own lists on top of the English ones: people mix English IT words in."""
        own = lists.lang.get(lang) if lang != "en" else None
        tables = [lists.synonyms] + ([own.synonyms] if own else [])
        synonyms = {
            tuple(form.split()): tuple(canonical.split())
            for table in tables
            for canonical, forms in table.items()
            for form in forms
        }
        stopwords = set(lists.stopwords) | (set(own.stopwords) if own else set())
        webex = set(lists.webex_words) | (set(own.webex_words) if own else set())
        snowball = _SNOWBALL.get(lang)
        return cls(
            stopwords=frozenset(stopwords),
            webex_words=frozenset(webex),
            synonyms=synonyms,
            synonym_starts=frozenset(key[0] for key in synonyms),
            synonym_max=max(map(len, synonyms), default=0),
            stem=_snowball(snowball) if snowball else stem,
            lang=lang,
        )

    def apply_synonyms(self, words: list[str]) -> list[str]:
        # Matched on tokens (longest first), which costs a few dict look-ups per word instead of a regex pass
        # per rule.
        starts, table = self.synonym_starts, self.synonyms
        out: list[str] = []
        i, n = 0, len(words)
        while i < n:
            word = words[i]
            if word in starts:
                for size in range(min(self.synonym_max, n - i), 0, -1):
                    canonical = table.get(tuple(words[i : i + size]))
                    if canonical is not None:
                        out.extend(canonical)
                        i += size
                        break
                else:
                    out.append(word)
                    i += 1
            else:
                out.append(word)
                i += 1
        return out

    def content_tokens(self, words: list[str]) -> list[str]:
        """The stemmed, non-stopword tokens of a text's words, in order."""
        stopwords, stem_word = self.stopwords, self.stem
        out = []
        for tok in self.apply_synonyms(words):
            if tok in stopwords or tok.isdigit():
                continue
            out.append(stem_word(tok))
            if len(out) >= MAX_TOKENS:
                break
        return out

    def tokens(self, text: str) -> list[str]:
        """content_tokens of raw text (normalised here)."""
        return self.content_tokens(words(normalize(text)))
