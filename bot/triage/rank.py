"""Ranking: codes and phrase scores into candidates, the out-of-scope guard, and the fix/clarify/none ladder."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from bot.triage.codes import SCORE_FULL_CODE, SCORE_KEYWORD_CODE, Found, find_codes
from bot.triage.index import TriageIndex
from bot.triage.normalise import MAX_TEXT_CHARS, normalize, words
from bot.triage.results import Evidence, Match, Outcome, TriageResult

MAX_CANDIDATES = 8  # text candidates kept per message: the ladder looks at the top three
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
# The canonical words (knowledge/words.toml's synonyms) that say something is wrong without saying what.
_FAILING = frozenset({"failed", "cannot", "not"})
UNKNOWN_WEIGHT = 1.0  # what a word the knowledge lacks weighs in the message's total: a common word's idf
# Long messages are also judged sentence by sentence.
LONG_WORDS = 30
MIN_SENTENCE_WORDS = 3
MAX_SENTENCES = 24
SENTENCE_WEIGHT = 0.95
MARKED_SHARE = (
    0.25  # ...and when more than this share of its sentences name something out of scope, it is about that
)
# A sentence ends at . ! ? or a line break; "1." "2)" step numbers start one. Not inside codes ("1000:1002"),
# versions ("4.2") or host names ("teams.webex.com"): the dot must be followed by a space.
_SENTENCE_END = re.compile(r"[.!?;]+(?=\s)|\n+|(?<!\d)\d{1,2}[.)](?=\s)")


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
    # Its evidence is a sentence of a long message that names nothing out of scope, in a message that
    # mostly doesn't either: "the screen goes blank" is not about the mouse the next sentence mentions.
    unmarked: bool = False


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


def _sentences(norm: str) -> list[list[str]]:
    """The words of each sentence (or line, or numbered step) of a long message, in order."""
    out = []
    for piece in _SENTENCE_END.split(norm[:MAX_TEXT_CHARS]):
        found = words(piece)
        if len(found) >= MIN_SENTENCE_WORDS:
            out.append(found)
    return out[:MAX_SENTENCES]


def _add_sentence_evidence(norm: str, candidates: dict[str, _Candidate], index: TriageIndex) -> None:
    """One strong sentence is not diluted by five lines of context: each sentence is scored on its own, and
    an article keeps its best score (a whole-message score already in `candidates` stays where it is higher).
    Pairs of neighbouring sentences were tried too: the same answers on the long-report set at twice the cost."""
    sentences = _sentences(norm)
    if len(sentences) < 2:
        return
    marked = [bool(_out_of_scope_markers(w, index)) for w in sentences]
    # Most sentences about something out of scope: then every candidate stays under the damping.
    mostly_out = sum(marked) > MARKED_SHARE * len(sentences)
    tokens_of = index.lexicon.content_tokens
    for window, has_marker in zip(sentences, marked, strict=True):
        found, _ = _score_text(tokens_of(window), index)
        for article_id, cand in found.items():
            cand.unmarked = not has_marker and not mostly_out
            # A window's share of the message it explains is of the window, not of the message: it counts
            # at SENTENCE_WEIGHT, so a sentence that merely mentions sign-in does not outrank the whole.
            cand.score *= SENTENCE_WEIGHT
            cand.text_score = cand.score
            known = candidates.get(article_id)
            if known is None or cand.score > known.score:
                candidates[article_id] = cand


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
    message_words = words(norm)
    codes, unknown, hints = find_codes(norm, message_words, index)
    candidates: dict[str, _Candidate] = {}
    strangers = 0
    # A written-out code is certain and ranks by where it stands: the wording could change neither the answer
    # nor its order, so then the fuzzy match is not run at all.
    if not any(score == SCORE_FULL_CODE for score, _, _ in codes.values()):
        candidates, strangers = _score_text(index.lexicon.content_tokens(message_words), index)
        if len(message_words) > LONG_WORDS:
            _add_sentence_evidence(norm, candidates, index)
    markers = _out_of_scope_markers(message_words, index)
    if codes and (
        markers or (strangers >= FOREIGN_WORDS and index.lexicon.webex_words.isdisjoint(message_words))
    ):
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
        error_words = index.message_words
        for cand in candidates.values():
            # A pasted Webex error text outweighs a mention of Slack; a phrase that merely shares words with the
            # message ("set up SAML SSO in Okta" for Zoom) does not.
            pasted = error_words.get(cand.id)
            if cand.unmarked:
                continue
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
    if outcome == "fix" and unknown and not codes:
        # "1000:1011" is a code the catalogue lacks: a fix for some other article, however well the words
        # match, would answer a question the person did not ask.
        outcome = "clarify"
    matches = _to_matches(ranked, outcome, limit) if limit > 0 else ()
    if outcome != "fix" and not codes and not unknown and not markers and _vague(message_words, index):
        # "webex is broken": too little to go on, but a person asking that is best helped by the common cases.
        outcome = "clarify"
        matches = tuple(Match(article_id, 0.0, "broad") for article_id in index.kb.broad_choices[:limit])
    return TriageResult(
        outcome=outcome,
        matches=matches,
        codes=tuple(sorted(codes, key=lambda i: codes[i][2])) if codes else (),
        unknown_codes=tuple(unknown),
        out_of_scope=markers,
    )


def _vague(message_words: list[str], index: TriageIndex) -> bool:
    """A message about Webex that says only that something is wrong: a Webex word, and besides it nothing but
    words for failing ("webex is broken", "Webex geht nicht"). "webex login broken" names what: not vague."""
    lexicon = index.lexicon
    if lexicon.webex_words.isdisjoint(message_words):
        return False
    content = [w for w in lexicon.apply_synonyms(message_words) if w not in lexicon.stopwords]
    return all(w in lexicon.webex_words or w in _FAILING for w in content)


def _decide(ranked: list[_Candidate], codes: Found, index: TriageIndex) -> Outcome:
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
