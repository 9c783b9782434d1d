"""Knowledge gaps: the questions the bot could not answer, grouped by similarity, and draft articles for them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from rapidfuzz import fuzz, process

from bot.knowledge import DRAFT_MARK, KnowledgeBase
from bot.redact import MASK, redact
from bot.store.records import GapQuestion  # a plain frozen dataclass: no I/O here
from bot.triage.normalise import Lexicon, normalize, words

# Two questions are alike at this token_sort_ratio of their content words (stems, synonyms folded, no
# stop words): "headset has no sound in meetings" and "no sound from my headset" are, "headset" and
# "printer jammed" are not. Measured on tests/test_gaps.py's questions.
SIMILAR = 62
EXAMPLES = 3
MAX_PHRASES = 12
MAX_PHRASE_CHARS = 200
TODO = DRAFT_MARK  # what `knowledge check` refuses in a draft until the admin has written the real text


@dataclass(frozen=True, slots=True)
class Gap:
    """Similar questions the knowledge did not answer, most central first."""

    questions: tuple[GapQuestion, ...]
    # The article the bot offered most for them (the answer voted down, or the best of "which of these?").
    offered: str | None
    offered_count: int

    @property
    def count(self) -> int:
        return len(self.questions)

    @property
    def stuck(self) -> int:
        """How many got an answer and said "No, still stuck"."""
        return sum(q.stuck for q in self.questions)

    def examples(self, n: int = EXAMPLES) -> list[str]:
        """Up to n different questions, the most typical first, redacted (again: the stored text already is)."""
        seen: dict[str, str] = {}
        for question in self.questions:
            text = " ".join(redact(question.text).split())
            seen.setdefault(text.casefold(), text)
            if len(seen) == n:
                break
        return list(seen.values())


def find_gaps(questions: Sequence[GapQuestion], lexicon: Lexicon, *, limit: int = 10) -> list[Gap]:
    """The `limit` largest groups of similar questions, largest first (ties: the most recent first)."""
    if not questions:
        return []
    import numpy as np  # only here: importing it with the bot would cost every replica 10 MiB for an admin command

    # Questions that say the same thing in the same words are compared once, and weigh as many.
    keys: dict[str, list[int]] = {}
    for i, question in enumerate(questions):
        keys.setdefault(_key(question.text, lexicon), []).append(i)
    choices = list(keys)
    weights = np.array([len(members) for members in keys.values()], dtype=np.int64)
    # The keys' words are sorted already, so plain ratio is token_sort_ratio without sorting every pair again
    # (ten times faster). Scores under SIMILAR come back as 0; uint8 keeps 5,000 questions at 25 MB.
    scores = process.cdist(
        choices, choices, scorer=fuzz.ratio, score_cutoff=SIMILAR, dtype=np.uint8, workers=-1
    )
    alike = scores >= SIMILAR
    np.fill_diagonal(alike, True)
    left = np.ones(len(choices), dtype=bool)
    gaps: list[Gap] = []
    while left.any() and len(gaps) < limit:
        # The question alike to the most others still left leads the next group (star clustering: no chains
        # of "a is like b is like c" where a and c have nothing in common).
        reach = (alike[:, left] @ weights[left]) * left
        # Of equals: the question asked most often, then the shortest (the plainest title), then the newest.
        tied = np.flatnonzero(reach == reach.max())
        leader = int(min(tied, key=lambda c: (-weights[c], len(choices[c]), c)))
        members = np.flatnonzero(alike[leader] & left)
        left[members] = False
        # The leader first, then the others by how alike they are to it.
        ordered = sorted(members, key=lambda m: (m != leader, -int(scores[leader, m]), m))
        picked = [questions[i] for m in ordered for i in keys[choices[m]]]
        offered = Counter(q.offered for q in picked if q.offered)
        top = min(offered.items(), key=lambda kv: (-kv[1], kv[0])) if offered else (None, 0)
        gaps.append(Gap(tuple(picked), top[0], top[1]))
    gaps.sort(key=lambda gap: -gap.count)  # stable: equal sizes keep the order they were found in
    return gaps


def _key(text: str, lexicon: Lexicon) -> str:
    # A masked secret says nothing about what was asked.
    text = text.replace(MASK, " ")
    tokens = lexicon.tokens(text) or words(normalize(text))
    return " ".join(sorted(tokens))


# --- Draft articles ----------------------------------------------------------------------------------------


def draft_id(gap: Gap, lexicon: Lexicon, taken: set[str]) -> str:
    """gap-<the leading question's first content words>, unique among `taken` (which it joins)."""
    leading = words(normalize(gap.questions[0].text.replace(MASK, " ")))
    content = [w for w in leading if w not in lexicon.stopwords and not w.isdigit()][:4] or ["question"]
    base = "gap-" + "-".join(content)[:50].strip("-")
    found, n = base, 1
    while found in taken:
        n += 1
        found = f"{base}-{n}"
    taken.add(found)
    return found


def draft_article(gap: Gap, article_id: str, kb: KnowledgeBase, *, days: int, now: datetime) -> str:
    """One [[article]] in articles.toml's format: `knowledge check` refuses it until every TODO is written."""
    title = _clean(gap.questions[0].text)[:120].rstrip(" ?.!") or "A question the bot could not answer"
    title = title[0].upper() + title[1:]
    phrases = list(dict.fromkeys(p for q in gap.questions if (p := _clean(q.text).casefold())))[:MAX_PHRASES]
    offered = (
        f"the bot offered {gap.offered} ({gap.offered_count}×)"
        if gap.offered
        else "the bot had nothing to offer"
    )
    head = [
        f"# Draft from `python -m bot gaps --draft` ({now:%Y-%m-%d}): {gap.count} question(s) in the last "
        f'{days} days, {gap.stuck} of them "No, still stuck"; {offered}.',
        "# Write the summary and the steps (every TODO), check the title, category, admin_needed and phrases,",
        "# then append this file to knowledge/articles.toml and run `python -m bot knowledge check`.",
        "# Examples:",
        *(f"#   {example}" for example in gap.examples()),
        "",
    ]
    links = [link for link in ("helpdesk-portal",) if link in kb.links]
    body = [
        "[[article]]",
        f"id = {_toml(article_id)}",
        'kind = "symptom"',
        f"title = {_toml(title)}",
        'category = "general"',
        "admin_needed = false",
        f"summary = {_toml(f'{TODO}: one sentence on what is wrong, in the words of the people who asked.')}",
        "phrases = [",
        *(f"    {_toml(phrase)}," for phrase in phrases),
        "]",
        "steps = [",
        f"    {_toml(f'{TODO}: the first thing to try.')},",
        f"    {_toml(f'{TODO}: what to do if that did not help (add or remove steps as needed).')},",
        "]",
        f"links = [{', '.join(map(_toml, links))}]",
    ]
    return "\n".join(head + body) + "\n"


def _clean(text: str) -> str:
    # A phrase is what people say, not what they pasted: no masked secrets, one line, bounded.
    return " ".join(text.replace(MASK, " ").split())[:MAX_PHRASE_CHARS]


def _toml(value: str) -> str:
    # A JSON string is a valid TOML basic string (the same escapes; json leaves only DEL raw, TOML wants none).
    return json.dumps(value.replace("\x7f", ""), ensure_ascii=False)
