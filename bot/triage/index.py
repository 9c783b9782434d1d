"""The triage index: every phrase of the knowledge tokenised and weighted once per knowledge load."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz, process

from bot.knowledge import Article, KnowledgeBase
from bot.triage.codes import message_text
from bot.triage.language import english_runs
from bot.triage.normalise import TOKEN, Lexicon, normalize, split_name

# A word in more than this share of the articles ("phone", "sign in") is common: where the message also has a
# rarer word, a common word adds only to phrases a rarer word found and to phrases made of common words alone.
COMMON_SHARE = 0.15
COMMON_MIN_POSTINGS = 12  # ...and in more phrases than this: below it, walking its postings costs nothing
FUZZY_TOKEN_CUTOFF = 80.0  # rapidfuzz ratio for typo correction: "blnk" -> "blank" is 88.9
# Typo searches remembered per index. Words outside the vocabulary repeat across messages ("laptop", "monday",
# the same typo); the bound keeps a stream of random words from growing it without limit.
MAX_CORRECTIONS = 4096
# A text score is COVER_SHARE of how much of the best phrase the message covers, ARTICLE_SHARE of how much of
# the message the article's whole vocabulary explains, and the rest of how much the phrase alone explains.
COVER_SHARE = 0.7
ARTICLE_SHARE = 0.15


@dataclass(frozen=True, slots=True)
class Phrase:
    article_id: str
    weights: dict[str, float]  # token -> idf weight
    total: float
    tokens: frozenset[str]  # the keys of weights, for one C-level intersection with the message's words


@dataclass(slots=True)
class TriageIndex:
    """Everything triage needs, precomputed from a KnowledgeBase: choices are processed once, here."""

    kb: KnowledgeBase
    lexicon: Lexicon
    suffixes: dict[str, str] = field(default_factory=dict)  # "1002" -> "1000:1002"
    names: dict[str, str] = field(default_factory=dict)  # "servicediscoveryauthenticationfailure" -> id
    names_re: re.Pattern[str] | None = None
    phrases: list[Phrase] = field(default_factory=list)
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
    # The catalogue's English error texts, casefolded: pasted into a message in any language, they say nothing
    # about the language it is written in.
    english_messages: tuple[str, ...] = ()
    # Each language's function words that no other supported language has (language detection's votes).
    function_words: dict[str, frozenset[str]] = field(default_factory=dict)
    english_runs: frozenset[tuple[str, str, str]] = frozenset()  # three-word runs of english_messages

    @property
    def lang(self) -> str:
        return self.lexicon.lang

    @classmethod
    def build(cls, kb: KnowledgeBase, common_share: float = COMMON_SHARE, lang: str = "en") -> TriageIndex:
        """The index of a knowledge base for messages in `lang`: the English phrases and, for another
        language, its own on top (people mix English words in). `common_share` above 1 makes no word
        common (the exhaustive search)."""
        lexicon = Lexicon.from_words(kb.words, lang)
        index = cls(kb=kb, lexicon=lexicon)
        raw: list[tuple[str, list[str]]] = []
        for n, article in enumerate(kb.articles.values()):
            index.order[article.id] = n
            for text in _choices(article, lang):
                tokens = list(dict.fromkeys(lexicon.tokens(text)))
                if tokens:
                    raw.append((article.id, tokens))
            for note in article.notes:
                index.family[note] = article.id
            if article.code:
                index.suffixes[article.code.split(":", 1)[1]] = article.id
            if article.name and len(split_name(article.name)) >= 2:
                index.names[article.name.lower()] = article.id
        index.english_messages = tuple(
            dict.fromkeys(
                message_text(a.message).casefold().strip(" .")
                for a in kb.articles.values()
                if a.message and len(message_text(a.message)) > 12
            )
        )
        index.function_words = _function_words(kb)
        index.english_runs = english_runs(index.english_messages)
        index.message_words = {
            a.id: frozenset(lexicon.tokens(message_text(a.message)))
            for a in kb.articles.values()
            if a.message
        }
        if index.names:
            index.names_re = re.compile(trie_pattern(index.names))
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
            index.phrases.append(Phrase(article_id, weights, sum(weights.values()), frozenset(weights)))
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
        own = kb.words.lang.get(lang)
        markers = (
            *kb.out_of_scope,
            *kb.out_of_scope_by_lang.get(lang, ()),
            *(own.out_of_scope if own else ()),
        )
        for marker in markers:
            words = tuple(TOKEN.findall(normalize(marker)))
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


def trie_pattern(words: Iterable[str]) -> str:
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


def _function_words(kb: KnowledgeBase) -> dict[str, frozenset[str]]:
    lists = {"en": frozenset(kb.words.stopwords)} | {
        lang: frozenset(own.stopwords) for lang, own in kb.words.lang.items()
    }
    return {
        lang: own.difference(*(other for name, other in lists.items() if name != lang))
        for lang, own in lists.items()
    }


def _choices(article: Article, lang: str) -> Iterable[str]:
    text = article.translations.get(lang) if lang != "en" else None
    if text is not None:
        yield text.title
        yield from text.phrases
        if text.message:
            yield message_text(text.message)
        yield from (step.title for step in text.steps if step.title)
    yield article.title
    yield from article.aliases
    yield from article.phrases
    if article.message:
        yield message_text(article.message)
    if article.name:
        yield " ".join(split_name(article.name))
    # A setup step's title is how admins ask about it ("test the SSO connection").
    yield from (step.title for step in article.steps if step.title)
