"""Pure triage: message text in, ranked knowledge matches out (no I/O)."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from rapidfuzz import fuzz, process

from bot.knowledge import Article, KnowledgeBase

# Work caps: a pasted log must not cost more than a normal message. Codes are scanned over a longer
# prefix than the fuzzy text match because people paste a whole dialog and the code sits at the end.
MAX_CODE_SCAN_CHARS = 20_000
MAX_TEXT_CHARS = 2_000
MAX_TOKENS = 80
MAX_CODES = 10
# A word in more than this share of the articles ("phone", "sign in") is common: where the message also has a
# rarer word, a common word adds only to phrases a rarer word found and to phrases made of common words alone.
COMMON_SHARE = 0.15
COMMON_MIN_POSTINGS = 12  # ...and in more phrases than this: below it, walking its postings costs nothing
MAX_CANDIDATES = 8  # text candidates kept per message: the ladder looks at the top three

# Scores in [0, 1]. An exact code is certain; a bare suffix after "error"/"code" almost so; a number
# alone ("my extension is 1005") is only a hint that needs the text to agree.
SCORE_FULL_CODE = 1.0
SCORE_KEYWORD_CODE = 0.97
SCORE_NAME = 0.95
SCORE_BARE_NUMBER = 0.45
SCORE_CORROBORATED_NUMBER = 0.9
EXACT_TEXT = 0.9
TEXT_UNDER_CODES = 0.89  # where the message has a code, text-only matches stay below the weakest code

MIN_SCORE = 0.2  # below this a candidate is noise and is not reported at all
CONFIDENT_AT = 0.78  # a text match must cover most of a phrase's weight to be answered outright
CLARIFY_AT = 0.5  # below this nothing is worth offering
# A text match short of CONFIDENT_AT is still the answer when nothing else comes near it.
DOMINANT_AT = 0.7
DOMINANT_MARGIN = 0.2
CLARIFY_BAND = 0.12  # candidates this close to the best are "which of these?"
FOREIGN_WORDS = 2  # unknown words that, with no Webex word, make "error 600" some other system's error
OUT_OF_SCOPE_DAMPING = 0.6  # a message naming another product is not answered from text alone
FUZZY_TOKEN_CUTOFF = 80.0  # rapidfuzz ratio for typo correction: "blnk" -> "blank" is 88.9
# Typo searches remembered per index. Words outside the vocabulary repeat across messages ("laptop", "monday",
# the same typo); the bound keeps a stream of random words from growing it without limit.
MAX_CORRECTIONS = 4096
# A text score is COVER_SHARE of how much of the best phrase the message covers, ARTICLE_SHARE of how much of
# the message the article's whole vocabulary explains, and the rest of how much the phrase alone explains.
COVER_SHARE = 0.7
ARTICLE_SHARE = 0.15
UNKNOWN_WEIGHT = 1.0  # what a word the knowledge lacks weighs in the message's total: a common word's idf

Outcome = Literal["fix", "clarify", "none"]
Evidence = Literal["code", "name", "text", "number"]


# Named tuples rather than frozen dataclasses: as immutable, and made several times per message at a third of
# the cost (a frozen dataclass sets each field through object.__setattr__).
class Match(NamedTuple):
    id: str
    score: float
    evidence: Evidence
    # Other articles that the text cannot tell apart from this one (same error message, different code).
    related: tuple[str, ...] = ()


class TriageResult(NamedTuple):
    outcome: Outcome
    matches: tuple[Match, ...]
    codes: tuple[str, ...] = ()  # catalogue codes found in the text, in order
    unknown_codes: tuple[str, ...] = ()  # "1000:N" forms that the catalogue lacks
    out_of_scope: tuple[str, ...] = ()  # out-of-scope markers seen in the text

    @property
    def confident(self) -> bool:
        return self.outcome == "fix"

    @property
    def best(self) -> Match | None:
        return self.matches[0] if self.matches else None

    def to_json(self) -> dict[str, object]:
        return {
            "confident": self.confident,
            "outcome": self.outcome,
            "matches": [
                {"id": m.id, "score": round(m.score, 4), "evidence": m.evidence, "related": list(m.related)}
                for m in self.matches
            ],
            "codes": list(self.codes),
            "unknown_codes": list(self.unknown_codes),
        }


# --- Normalisation ---------------------------------------------------------------------------------

# Every regex below is linear: bounded repeats, no nested quantifiers, so 50,000 digits and colons
# cost a single pass.
_FULL_CODE = re.compile(r"(?<![\d.])1000[ \t]{0,3}([:;/\-–—.])[ \t]{0,3}(\d{1,4})(?![\d:])")
_SPACED_CODE = re.compile(r"(?<![\d.:])1000 {1,2}()(\d{1,4})(?![\d:])")  # () keeps groups as in _FULL_CODE
_KEYWORD_CODE = re.compile(
    r"\b(?:error|err|code|errorcode|error code|error no|error number)[ \t]{0,3}[:#=]?[ \t]{0,3}(?:is |was )?\(?(\d{1,4})(?![\d:/\-])"
)
_CODE_KEYWORD = re.compile(r"(?<![\d:/\-])(\d{1,4})\)?[ \t]{0,2}(?:error|err)\b")
_BARE_NUMBER = re.compile(r"(?<![\d:/\-.])(\d{3,4})(?![\d:/\-.])")
_TOKEN = re.compile(r"[a-z0-9]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")

# Control characters and markdown punctuation become spaces; curly quotes become straight ones.
_CLEAN = {c: " " for c in range(32) if c not in (9, 10)} | {127: " "}
_CLEAN |= {ord(c): " " for c in '*_`~#>|[](){}<>"\\'}
_CLEAN |= {ord("’"): "'", ord("‘"): "'", ord("“"): " ", ord("”"): " "}
# Invisible format characters (zero-width spaces and joiners, bidi marks, BOM, soft hyphen) are dropped,
# not spaced: pasted from chat clients they sit inside codes ("1000\u200b:1002") and words.
_INVISIBLE = [0x00AD, 0x061C, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F)]
_INVISIBLE += [*range(0x2060, 0x2065), *range(0x2066, 0x2070), *range(0xFFF9, 0xFFFC)]
_CLEAN |= dict.fromkeys(_INVISIBLE)

# Word-level synonyms so that "log in", "login" and "sign-in" meet, and so do "can't", "cant", "unable to".
# Matched on tokens (longest first), which costs a few dict look-ups per word instead of a regex pass per rule.
_SYNONYM_TABLE: dict[str, tuple[str, ...]] = {
    "sso": ("single sign on", "single signon", "singlesignon"),
    "failed": (
        "not working",
        "isnt working",
        "doesnt work",
        "dont work",
        "wont work",
        "arent working",
        "stopped working",
        "is not working",
        "does not work",
        "broken",
        "broke",
        "failing",
        "fails",
    ),
    "cannot": (
        "cant",
        "can not",
        "unable to",
        "couldnt",
        "could not",
        "wont let me",
        "doesnt let me",
        "will not let me",
    ),
    "signin": (
        "sign in",
        "sign on",
        "sign into",
        "signing in",
        "signing into",
        "signed in",
        "log in",
        "log on",
        "log into",
        "logging in",
        "logging into",
        "logged in",
        "login",
        "logins",
        "logon",
        "signin",
        "signing",
    ),
    "signout": ("sign out", "signed out", "log out", "logged out", "logout", "signout"),
    "not": ("wont", "doesnt", "dont", "isnt", "never", "didnt", "havent", "hasnt"),
    "username": ("user name", "user id", "userid"),
    "password": ("pass word", "passwd", "pwd"),
    "popup": ("pop up", "pop ups", "popups"),
    "confirmation pin": (
        "confirmation code",
        "verification code",
        "activation code",
        "security code",
        "one time code",
        "verification pin",
        "confirmation number",
    ),
    "idp": ("id p", "identity provider"),
    "cucm": ("unified cm", "unifiedcm", "call manager", "callmanager"),
    "office365": ("o365", "office 365", "microsoft 365"),
    "azuread": ("azure ad", "azuread", "entra", "entra id"),
    "wifi": ("wi fi",),
    "sixdigit": ("six digit", "6 digit"),
    # "on" and "off" are stopwords, and "turn on SAML" must not read as "turn off SAML".
    "enable": (
        "turn on",
        "turning on",
        "turned on",
        "switch on",
        "switched on",
        "activate",
        "activating",
        "enabling",
    ),
    "disable": (
        "turn off",
        "turning off",
        "turned off",
        "switch off",
        "switched off",
        "deactivate",
        "disabling",
    ),
    "configuration": ("config", "configs"),
    "cancel": ("cancelled", "canceled", "cancelling", "canceling", "cancels"),
    "certificate": ("cert", "certs"),
    "incorrect": ("wrong",),
    "untrusted": ("not trusted", "isnt trusted", "not trust", "doesnt trust", "dont trust", "distrusted"),
    "breakglass": ("break glass",),
    # SSOWhoAmIFailure: "who am i" is all stopwords, so the phrase people use must become a word of its own.
    "whoami": ("who am i", "who i am", "who im", "identify me", "who you are"),
}
_SYNONYMS: dict[tuple[str, ...], tuple[str, ...]] = {
    tuple(form.split()): tuple(canonical.split())
    for canonical, forms in _SYNONYM_TABLE.items()
    for form in forms
}
_SYNONYM_STARTS = frozenset(key[0] for key in _SYNONYMS)
_SYNONYM_MAX = max(map(len, _SYNONYMS))
# Words that put a message in Webex's world whatever else it says (raw words, before synonyms).
_WEBEX_WORDS = frozenset(
    ["webex", "teams", "calling", "call", "calls", "phone", "phones", "jabber", "cisco", "sso"]
)
_HOST = re.compile(r"\b([a-z0-9]{1,30})\.([a-z0-9]{1,30})\.com\b")
_HAS_DIGIT = re.compile(r"\d")
_CODE_CHARS = re.compile(r"[\d:;/\-–—]")
_CODE_TAIL = re.compile(r"[\d\s:;/\-–—]{1,40}$")


def _apply_synonyms(words: list[str]) -> list[str]:
    out: list[str] = []
    i, n = 0, len(words)
    while i < n:
        word = words[i]
        if word in _SYNONYM_STARTS:
            for size in range(min(_SYNONYM_MAX, n - i), 0, -1):
                canonical = _SYNONYMS.get(tuple(words[i : i + size]))
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


_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "if",
        "then",
        "so",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "have",
        "has",
        "had",
        "having",
        "i",
        "me",
        "my",
        "mine",
        "we",
        "our",
        "us",
        "you",
        "your",
        "yours",
        "he",
        "she",
        "it",
        "its",
        "they",
        "them",
        "their",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "all",
        "any",
        "some",
        "each",
        "every",
        "just",
        "also",
        "very",
        "really",
        "still",
        "again",
        "now",
        "today",
        "yesterday",
        "morning",
        "tonight",
        "week",
        "weekend",
        "since",
        "after",
        "before",
        "while",
        "up",
        "down",
        "out",
        "off",
        "over",
        "under",
        "too",
        "can",
        "could",
        "would",
        "should",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "get",
        "gets",
        "got",
        "getting",
        "keep",
        "keeps",
        "kept",
        "go",
        "goes",
        "going",
        "went",
        "try",
        "tried",
        "trying",
        "please",
        "pls",
        "plz",
        "thanks",
        "thank",
        "thx",
        "hi",
        "hello",
        "hey",
        "help",
        "need",
        "want",
        "anyone",
        "someone",
        "something",
        "anything",
        "everything",
        "nothing",
        "know",
        "tell",
        "ask",
        "asking",
        "says",
        "said",
        "say",
        "see",
        "seeing",
        "shows",
        "showing",
        "show",
        "shown",
        "appears",
        "appear",
        "message",
        "msg",
        "error",
        "err",
        "code",
        "issue",
        "issues",
        "problem",
        "problems",
        "webex",
        "teams",
        "cisco",
        "app",
        "application",
        "use",
        "using",
        "used",
        "working",
        "work",
        "works",
        "time",
        "times",
        "one",
        "thing",
        "things",
        "like",
        "ok",
        "okay",
        "yes",
        "no",
        "yeah",
        "via",
        "per",
        "etc",
        "im",
        "ive",
        "youre",
        "im",
        "ive",
        "id",
        "ill",
        "its",
        "dont",
        "doesnt",
        "isnt",
        "same",
        "not",
    ]
)


def normalize(text: str) -> str:
    """Casefold, NFKC, strip control characters and markdown, and apply word synonyms."""
    if len(text) > MAX_CODE_SCAN_CHARS:
        cut = text[:MAX_CODE_SCAN_CHARS]
        if _CODE_CHARS.match(text, MAX_CODE_SCAN_CHARS):
            # A code straddles the cap: drop its first half rather than read "1000:10" as another code.
            cut = cut[:-60] + _CODE_TAIL.sub("", cut[-60:])
        text = cut
    if text.isascii():
        # Most messages: NFKC leaves ASCII as it is and casefold() is lower(); skip the two Unicode passes.
        return text.lower().translate(_CLEAN)
    return unicodedata.normalize("NFKC", text).casefold().translate(_CLEAN)


@functools.lru_cache(maxsize=8192)
def _stem(token: str) -> str:
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


def _words(norm: str) -> list[str]:
    """The words of normalised text; triage splits a message once and every step reads this list."""
    # "you're" -> "youre" keeps contractions one word, so the synonym table only needs "cant".
    text = norm[:MAX_TEXT_CHARS].replace("'", "")
    if ".com" in text:
        # A host name is one word, and a telling one: "teams.webex.com" is the SP-initiated start page,
        # "signin.webex.com" the sign-in page, where "teams", "webex" and "com" on their own say nothing.
        text = _HOST.sub(r"\1\2", text)
    return _TOKEN.findall(text)


def content_tokens(text: str) -> list[str]:
    """The stemmed, non-stopword tokens of already-normalised text, in order."""
    return _content_tokens(_words(text))


def _content_tokens(words: list[str]) -> list[str]:
    out = []
    for tok in _apply_synonyms(words):
        if tok in _STOPWORDS or tok.isdigit():
            continue
        out.append(_stem(tok))
        if len(out) >= MAX_TOKENS:
            break
    return out


def split_name(name: str) -> list[str]:
    """ "ServiceDiscoveryNoSRVRecordsFound" -> ["service", "discovery", "no", "srv", "records", "found"]."""
    return [p.lower() for p in _CAMEL.findall(name)]


# --- The index, built once per knowledge load -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Phrase:
    article_id: str
    weights: dict[str, float]  # token -> idf weight
    total: float
    tokens: frozenset[str]  # the keys of weights, for one C-level intersection with the message's words


@dataclass(slots=True)
class TriageIndex:
    """Everything triage needs, precomputed from a KnowledgeBase: choices are processed once, here."""

    kb: KnowledgeBase
    suffixes: dict[str, str] = field(default_factory=dict)  # "1002" -> "1000:1002"
    names: dict[str, str] = field(default_factory=dict)  # "servicediscoveryauthenticationfailure" -> id
    names_re: re.Pattern[str] | None = None
    phrases: list[_Phrase] = field(default_factory=list)
    postings: dict[str, list[int]] = field(default_factory=dict)  # token -> phrase indexes
    posting_sets: dict[str, frozenset[int]] = field(default_factory=dict)  # the same, for common tokens
    plain_postings: dict[str, list[int]] = field(
        default_factory=dict
    )  # common token -> its all-common phrases
    idf: dict[str, float] = field(default_factory=dict)
    vocab_by_len: dict[int, list[str]] = field(default_factory=dict)
    near_len: dict[int, list[str]] = field(default_factory=dict)  # filled lazily by near_length()
    corrections: dict[str, tuple[str, float] | None] = field(default_factory=dict)  # correct()'s memory
    # Out-of-scope markers by their first word: each marker as its words, matched on whole words.
    markers: dict[str, list[tuple[str, ...]]] = field(default_factory=dict)
    order: dict[str, int] = field(default_factory=dict)  # catalogue order, the final tie-break
    cover_coef: list[float] = field(default_factory=list)
    explain_coef: list[float] = field(default_factory=list)
    article_coef: list[float] = field(default_factory=list)
    article_vocab: dict[str, frozenset[str]] = field(default_factory=dict)
    article_of: list[str] = field(default_factory=list)
    family: dict[str, str] = field(default_factory=dict)  # setup note id -> its guide id
    message_words: dict[str, frozenset[str]] = field(default_factory=dict)  # an error's message, as words
    min_info: float = 1.0  # the idf mass a phrase needs before its full coverage counts as an answer

    @classmethod
    def build(cls, kb: KnowledgeBase, common_share: float = COMMON_SHARE) -> TriageIndex:
        """The index of a knowledge base; `common_share` above 1 makes no word common (the exhaustive search)."""
        index = cls(kb=kb)
        raw: list[tuple[str, list[str]]] = []
        for n, article in enumerate(kb.articles.values()):
            index.order[article.id] = n
            for text in _choices(article):
                tokens = list(dict.fromkeys(content_tokens(normalize(text))))
                if tokens:
                    raw.append((article.id, tokens))
            for note in article.notes:
                index.family[note] = article.id
            if article.code:
                index.suffixes[article.code.split(":", 1)[1]] = article.id
            if article.name and len(split_name(article.name)) >= 2:
                index.names[article.name.lower()] = article.id
        index.message_words = {
            a.id: frozenset(content_tokens(normalize(_message_text(a.message))))
            for a in kb.articles.values()
            if a.message
        }
        if index.names:
            index.names_re = re.compile(_trie_pattern(index.names))
        # Document frequency counts articles, not phrases: a word in every error message says little.
        df: dict[str, set[str]] = defaultdict(set)
        for article_id, tokens in raw:
            for tok in tokens:
                df[tok].add(article_id)
        n_articles = max(1, len(kb.articles))
        index.idf = {tok: math.log(1.0 + n_articles / len(ids)) for tok, ids in df.items()}
        # About one rare word's worth: "blank screen" qualifies, "webex login" alone does not.
        index.min_info = 0.75 * math.log(1.0 + n_articles)
        distinct: set[tuple[str, frozenset[str]]] = set()
        for article_id, tokens in raw:
            key = (article_id, frozenset(tokens))
            if key in distinct:
                continue  # the same words as another phrase of the article ("registration failed." as title)
            distinct.add(key)
            weights = {tok: index.idf[tok] for tok in tokens}
            index.phrases.append(_Phrase(article_id, weights, sum(weights.values()), frozenset(weights)))
        postings: dict[str, list[int]] = defaultdict(list)
        for i, phrase in enumerate(index.phrases):
            for tok in phrase.weights:
                postings[tok].append(i)
        index.postings = dict(postings)
        index.posting_sets = {
            tok: frozenset(ids)
            for tok, ids in postings.items()
            if len(df[tok]) > common_share * n_articles and len(ids) > COMMON_MIN_POSTINGS
        }
        # Phrases made of common words alone ("can't sign in to phone services") are only reached through them.
        plain: dict[str, list[int]] = defaultdict(list)
        for i, phrase in enumerate(index.phrases):
            if phrase.tokens.issubset(index.posting_sets):
                for tok in phrase.tokens:
                    plain[tok].append(i)
        index.plain_postings = dict(plain)
        # Per-phrase constants of the score, so the hot loop is two multiplications and an add.
        # A phrase made of common words ("webex login") is a topic hint, not an answer by itself: info < 1.
        for phrase in index.phrases:
            info = min(1.0, phrase.total / index.min_info)
            index.cover_coef.append(COVER_SHARE * info / phrase.total)
            index.explain_coef.append((1.0 - COVER_SHARE - ARTICLE_SHARE) * info)
            index.article_coef.append(ARTICLE_SHARE * info)
            index.article_of.append(phrase.article_id)
        vocab: dict[str, set[str]] = defaultdict(set)
        for phrase in index.phrases:
            vocab[phrase.article_id].update(phrase.tokens)
        index.article_vocab = {a: frozenset(v) for a, v in vocab.items()}
        by_len: dict[int, list[str]] = defaultdict(list)
        for tok in index.idf:
            by_len[len(tok)].append(tok)
        index.vocab_by_len = dict(by_len)
        for marker in kb.out_of_scope:
            words = tuple(_TOKEN.findall(normalize(marker)))
            if not words:
                continue
            # Each marker also in its plural: "licenses" and "webhooks" name the same thing as the marker.
            for form in (words, (*words[:-1], words[-1] + "s")):
                found = index.markers.setdefault(form[0], [])
                if form not in found:
                    found.append(form)
        return index

    def near_length(self, length: int) -> list[str]:
        """Vocabulary words close enough in length to reach the fuzzy cutoff; built once per length."""
        found = self.near_len.get(length)
        if found is None:
            span = max(1, length // 4)
            found = [w for n in range(length - span, length + span + 1) for w in self.vocab_by_len.get(n, ())]
            self.near_len[length] = found
        return found

    def correct(self, token: str) -> tuple[str, float] | None:
        """The vocabulary word a typo most likely meant, with its similarity, or None."""
        if token in self.idf:
            return token, 1.0
        if len(token) < 4 or token.isdigit():
            return None
        try:
            return self.corrections[token]
        except KeyError:
            pass
        if len(self.corrections) >= MAX_CORRECTIONS:
            self.corrections.clear()
        found = self.corrections[token] = self._search(token)
        return found

    def _search(self, token: str) -> tuple[str, float] | None:
        # ratio >= 80 bounds the length difference, so only near-length words are candidates.
        choices = self.near_length(len(token))
        if not choices:
            return None
        found = process.extractOne(token, choices, scorer=fuzz.ratio, score_cutoff=FUZZY_TOKEN_CUTOFF)
        if found is None:
            return None
        return found[0], found[1] / 100.0


def _trie_pattern(words: Iterable[str]) -> str:
    """One regex for many literal words, factored by common prefix ("sso(?:cancelled|certificateerror|...)").

    re tries an alternation's branches one by one at every position; factored, it follows one branch per
    letter. The optional group after a word's end is greedy, so the longest word wins, as a longest-first
    alternation would."""
    trie: dict[str, Any] = {}
    for word in words:
        node = trie
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}  # end of a word

    def emit(node: dict[str, Any]) -> str:
        ends = "" in node
        branches = [re.escape(char) + emit(child) for char, child in sorted(node.items()) if char]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends:
            return ("(?:" + body + ")?") if len(branches) == 1 else body + "?"
        return body

    return emit(trie)


def _choices(article: Article) -> Iterable[str]:
    yield article.title
    yield from article.aliases
    yield from article.phrases
    if article.message:
        yield _message_text(article.message)
    if article.name:
        yield " ".join(split_name(article.name))
    # A setup step's title is how admins ask about it ("test the SSO connection").
    yield from (step.title for step in article.steps if step.title)


def _message_text(message: str) -> str:
    # The message without its "Error: 1000:N" tail is what people paste and paraphrase.
    return _FULL_CODE.sub(" ", message).replace("Error:", " ").replace("Error", " ")


# --- Triage ------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)  # compared by identity: "cand in strong" must not compare every field
class _Candidate:
    id: str
    score: float = 0.0
    evidence: Evidence = "text"
    text_score: float = 0.0
    explained: frozenset[str] = frozenset()
    covered: frozenset[str] = frozenset()  # the message's words that any phrase of the article has
    position: int = 1 << 30
    order: int = 0  # catalogue order, the last tie-break


def _find_codes(
    text: str, words: list[str], index: TriageIndex
) -> tuple[dict[str, tuple[float, Evidence, int]], list[str], list[str]]:
    """Codes by id -> (score, evidence, position); the unknown full codes; bare-number hints (ids).

    `words` are the text's words (_words): names are looked for in them, squeezed together."""
    found: dict[str, tuple[float, Evidence, int]] = {}
    unknown: list[str] = []

    def add(article_id: str, score: float, evidence: Evidence, pos: int) -> None:
        prev = found.get(article_id)
        if prev is None or prev[0] < score:
            found[article_id] = (score, evidence, pos if prev is None else min(pos, prev[2]))

    has_digit = _HAS_DIGIT.search(text) is not None
    # Each pattern needs a literal ("1000", "err", "code"): a substring test is far cheaper than a regex scan.
    if has_digit and "1000" in text:
        for pattern in (_FULL_CODE, _SPACED_CODE):
            for m in pattern.finditer(text):
                suffix = str(int(m.group(2)))
                if m.group(1) == "." and len(m.group(2)) < 3:
                    continue  # "1000.600" is a code typed with a dot; "1000.5" and "$1000.99" are amounts
                if suffix in index.suffixes:
                    add(index.suffixes[suffix], SCORE_FULL_CODE, "code", m.start())
                elif pattern is _FULL_CODE and m.group(1) != "." and f"1000:{suffix}" not in unknown:
                    unknown.append(f"1000:{suffix}")
                if len(found) >= MAX_CODES:
                    break
    if has_digit and ("err" in text or "code" in text):
        for pattern in (_KEYWORD_CODE, _CODE_KEYWORD):
            for m in pattern.finditer(text):
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


def _score_text(tokens: list[str], index: TriageIndex) -> tuple[dict[str, _Candidate], int]:
    """Best phrase per article: the share of the phrase's weight the message covers, nudged by how much of
    the message the phrase and the article as a whole explain (so "keep uninvited people out of my meeting"
    goes to the article that knows all four words, not to the one whose short phrase has "meeting").
    Sums run over the postings of the message's words only, so cost follows the hits, not the catalogue.
    Also returns how many of the words the knowledge does not know, typos included."""
    idf, postings = index.idf, index.postings
    weight: dict[str, float] = {}  # the message's known words: idf, times the similarity for a typo
    unknown = 0
    for tok in tokens:
        if tok in idf:  # most words are known: skip the typo search
            weight[tok] = idf[tok]
            continue
        hit = index.correct(tok)
        if hit is None:
            unknown += 1
        elif weight.get(hit[0], 0.0) < idf[hit[0]] * hit[1]:
            weight[hit[0]] = idf[hit[0]] * hit[1]
    if not weight:
        return {}, unknown
    # One sum serves both sides: the matched weight over the phrase's total is how much of the phrase the
    # message covers; over the message's total, how much it explains. Words the knowledge doesn't know count
    # in that total: "book me a meeting room" is not explained by a phrase that only has "meeting".
    inv_query = 1.0 / (sum(map(idf.__getitem__, weight)) + UNKNOWN_WEIGHT * unknown)
    matched: defaultdict[int, float] = defaultdict(float)
    posting_sets = index.posting_sets  # holds exactly the common words
    common = [t for t in weight if t in posting_sets]
    rare = [t for t in weight if t not in posting_sets]
    for tok in rare or common:
        w = weight[tok]
        for i in postings[tok]:
            matched[i] += w
    if rare and common:
        # Common words add to the phrases a rarer word found and to the phrases made of common words alone.
        # What this skips, a phrase whose rare words the message lacks, covers too little to be the answer.
        found = frozenset(matched)
        plain = index.plain_postings
        for tok in common:
            w = weight[tok]
            for i in posting_sets[tok].intersection(found):
                matched[i] += w
            for i in plain.get(tok, ()):
                matched[i] += w
    cover_coef, explain_coef, article_of = index.cover_coef, index.explain_coef, index.article_of
    best: dict[str, float] = {}
    best_phrase: dict[str, int] = {}
    for i, m in matched.items():
        score = m * (cover_coef[i] + explain_coef[i] * inv_query)
        article_id = article_of[i]
        if score > best.get(article_id, -1.0):
            best[article_id] = score
            best_phrase[article_id] = i
    # Only the leaders get the article-wide share and their evidence spelt out; the tail is never compared.
    # (Stable sorts: ties keep the order in which the articles were found.)
    leaders = sorted(best, key=best.__getitem__, reverse=True)[:MAX_CANDIDATES]
    vocab_of, article_coef = index.article_vocab, index.article_coef
    covered: dict[str, frozenset[str]] = {}
    for article_id in leaders:
        covered[article_id] = words = vocab_of[article_id].intersection(weight)
        best[article_id] += (
            article_coef[best_phrase[article_id]] * inv_query * sum(map(weight.__getitem__, words))
        )
    leaders.sort(key=best.__getitem__, reverse=True)
    phrases = index.phrases
    out: dict[str, _Candidate] = {}
    for article_id in leaders:
        score = best[article_id]
        # Positional, in field order (id, score, evidence, text_score, explained, covered): the hot call.
        out[article_id] = _Candidate(
            article_id,
            score,
            "text",
            score,
            phrases[best_phrase[article_id]].tokens.intersection(weight),
            covered[article_id],
        )
    return out, unknown


def _out_of_scope_markers(words: list[str], index: TriageIndex) -> tuple[str, ...]:
    # Unstemmed words on purpose: "recording" is out of scope, an "SRV record" is not.
    markers = index.markers
    if markers.keys().isdisjoint(words):
        return ()  # the common case: no marker's first word appears, so no marker can
    found: dict[str, None] = {}
    for i, word in enumerate(words):
        for form in markers.get(word, ()):
            if len(form) == 1 or tuple(words[i : i + len(form)]) == form:
                found[" ".join(form)] = None
    return tuple(found)


def _rank_key(c: _Candidate) -> tuple[float, int, int, int]:
    # Rounded so that float noise in the sums does not decide a tie the next keys should.
    return (-round(c.score, 6), c.position, -len(c.explained), c.order)


def triage(text: str, index: TriageIndex, limit: int = 5) -> TriageResult:
    """Rank the knowledge articles for one message. Deterministic, bounded work, never raises on input."""
    norm = normalize(text)
    words = _words(norm)
    codes, unknown, hints = _find_codes(norm, words, index)
    candidates: dict[str, _Candidate] = {}
    strangers = 0
    # A written-out code is certain and ranks by where it stands: the wording could change neither the answer
    # nor its order, so then the fuzzy match is not run at all.
    if not any(score == SCORE_FULL_CODE for score, _, _ in codes.values()):
        candidates, strangers = _score_text(_content_tokens(words), index)
    markers = _out_of_scope_markers(words, index)
    if codes and (markers or (strangers >= FOREIGN_WORDS and _WEBEX_WORDS.isdisjoint(words))):
        # "error 500 on the HR portal", "the copier says code 1001": a bare number after "error" is a Webex
        # code unless the message is about something else, by a marker or by words the knowledge doesn't
        # know and nothing Webex. Then it is a hint, as good as a code only if the wording agrees.
        for article_id in [i for i, (score, _, _) in codes.items() if score == SCORE_KEYWORD_CODE]:
            del codes[article_id]
            hints.append(article_id)

    for article_id, (score, evidence, pos) in codes.items():
        cand = candidates.get(article_id) or _Candidate(id=article_id)
        # Text that agrees breaks ties between codes.
        cand.score = min(score + 0.01 * min(1.0, cand.text_score), 1.0)
        cand.evidence, cand.position = evidence, pos
        candidates[article_id] = cand
    for article_id in hints:
        cand = candidates.get(article_id) or _Candidate(id=article_id)
        if cand.text_score >= CLARIFY_AT:
            # "whoami failure 605": a bare number the wording agrees with is as good as a written-out code.
            cand.score, cand.evidence = SCORE_CORROBORATED_NUMBER, "code"
            codes[article_id] = (cand.score, "code", 1 << 20)
        else:
            cand.score, cand.evidence = max(SCORE_BARE_NUMBER, cand.text_score), "number"
        candidates[article_id] = cand
    if codes:
        # Any code outranks any wording: "err#602 failed to start new sso session" is 1000:602, although its
        # text is 1000:500's message word for word.
        for cand in candidates.values():
            if cand.evidence in ("text", "number") and cand.score > TEXT_UNDER_CODES:
                cand.score = TEXT_UNDER_CODES
    elif markers:
        message_words = index.message_words
        for cand in candidates.values():
            # A pasted Webex error text outweighs a mention of Slack; a phrase that merely shares words with the
            # message ("set up SAML SSO in Okta" for Zoom) does not.
            pasted = message_words.get(cand.id)
            if (
                cand.text_score < EXACT_TEXT
                or pasted is None
                or len(pasted) < 4
                or not pasted <= cand.covered
            ):
                cand.score *= OUT_OF_SCOPE_DAMPING

    ranked = [c for c in candidates.values() if c.score > MIN_SCORE]
    if len(ranked) > 1:  # often there is just one
        order = index.order
        for cand in ranked:
            cand.order = order.get(cand.id, 0)
        ranked.sort(key=_rank_key)
    outcome = _decide(ranked, codes, index)
    matches = _to_matches(ranked, outcome, limit) if limit > 0 else ()
    return TriageResult(
        outcome=outcome,
        matches=matches,
        codes=tuple(sorted(codes, key=lambda i: codes[i][2])) if codes else (),
        unknown_codes=tuple(unknown),
        out_of_scope=markers,
    )


def _decide(
    ranked: list[_Candidate], codes: dict[str, tuple[float, Evidence, int]], index: TriageIndex
) -> Outcome:
    if not ranked:
        return "none"
    top = ranked[0]
    if top.id in codes:
        return "fix"  # every code named in the message is answered, best first
    if top.score < CLARIFY_AT:
        return "none"
    runner_up = ranked[1].score if len(ranked) > 1 else 0.0
    if top.score >= DOMINANT_AT and runner_up <= top.score - DOMINANT_MARGIN:
        return "fix"
    rivals = [c for c in ranked[1:] if c.score >= top.score - CLARIFY_BAND]
    if top.score >= CONFIDENT_AT and all(
        _dominates(top, r) or _same_evidence(top, r) or _same_family(top.id, r.id, index) for r in rivals
    ):
        return "fix"
    return "clarify"


def _same_evidence(a: _Candidate, b: _Candidate) -> bool:
    # Two codes that share one message text can't be told apart by any wording: answering one and naming
    # the other beats asking the user a question they cannot answer (and a "which of these?" listing twins).
    return a.explained == b.explained and abs(a.score - b.score) < 0.02


def _same_family(a: str, b: str, index: TriageIndex) -> bool:
    """The setup guide and its notes are one document: "which of these?" between them helps no one."""
    return index.family.get(a, a) == index.family.get(b, b)


def _dominates(a: _Candidate, b: _Candidate) -> bool:
    """a explains strictly more of the message than b, and b explains nothing that a doesn't.

    By what the whole article knows, not only the best phrase: the pasted "Sign into your account..." that
    eleven codes share is also 1000:601's message, so with "I hit cancel" 1000:601 explains all of it."""
    return a.score > b.score and (b.explained < a.explained or b.covered < a.covered)


def _shown(score: float) -> float:
    return round(min(1.0, max(0.0, score)), 4)


def _to_matches(ranked: list[_Candidate], outcome: Outcome, limit: int) -> tuple[Match, ...]:
    # Twins (same evidence) are grouped among the text matches worth showing at all.
    strong = [c for c in ranked if c.evidence == "text" and c.score >= CLARIFY_AT]
    # Twins explain the same words, so only candidates in one group of equal `explained` sets can be twins.
    twins: dict[frozenset[str], list[_Candidate]] = {}
    for c in strong:
        twins.setdefault(c.explained, []).append(c)
    if len(twins) == len(strong):  # the common case: nothing to group
        # Scores are in [0, 1] up to float noise above 1; clamp only that side, inline (the hot path).
        return tuple(
            [Match(c.id, round(c.score if c.score < 1.0 else 1.0, 4), c.evidence) for c in ranked[:limit]]
        )
    out: list[Match] = []
    consumed: set[str] = set()
    for cand in ranked:
        if cand.id in consumed:
            continue
        related: tuple[str, ...] = ()
        group = twins.get(cand.explained, ()) if cand.evidence == "text" else ()
        if len(group) > 1 and cand in group:
            related = tuple(
                r.id for r in group if r is not cand and r.id not in consumed and _same_evidence(cand, r)
            )
        if outcome != "none":
            consumed.update(related)
        out.append(Match(cand.id, _shown(cand.score), cand.evidence, related))
        consumed.add(cand.id)
        if len(out) >= limit:
            break
    return tuple(out)
