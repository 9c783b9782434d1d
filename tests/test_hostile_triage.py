"""Hostile input for the pure triage core: never raises, deterministic, well-formed, bounded work."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.knowledge import KnowledgeBase, load_knowledge
from bot.triage import (
    MAX_CODE_SCAN_CHARS,
    MAX_CODES,
    MAX_TOKENS,
    TriageIndex,
    TriageResult,
    normalize,
    triage,
)
from tests.conftest import KNOWLEDGE_DIR

# Generous: a normal message takes a few milliseconds. This catches quadratic blow-ups, not
# micro-regressions (those belong in bench/).
PER_CALL_SECONDS = 0.5
LIMIT = 5
UNKNOWN_CODE = re.compile(r"^1000:\d{1,4}$")
TOKEN = re.compile(r"^[a-z0-9]+$")
# What normalize promises to remove: control characters (except tab and newline) and markdown punctuation.
CLEANED = {chr(c) for c in range(32) if c not in (9, 10)} | {chr(127)} | set('*_`~#>|[](){}<>"\\')

HOSTILE = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Characters that have broken text handling elsewhere: bidi overrides, zero-width and joiners, combining
# marks, BOM, NUL and other controls, lone surrogates, full-width and look-alike letters, emoji with ZWJ.
TRICKY = [
    "\u202e",
    "\u202d",
    "\u200f",
    "\u200e",
    "\u2066",
    "\u2069",  # bidi
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",  # zero-width, soft hyphen
    "\u0301",
    "\u0308",
    "\u20dd",
    "\u0489",  # combining
    "\x00",
    "\x07",
    "\x1b",
    "\x7f",
    "\r",
    "\t",
    "\n",
    "\u2028",
    "\u2029",
    "\x85",
    "\ud800",
    "\udfff",
    "\udc80",  # lone surrogates (legal in a Python str)
    "Ｅ",
    "ｒ",
    "Е",
    "о",
    "１",
    "０",
    "：",
    "／",
    "—",
    "–",
    "٣",
    "۱",  # look-alikes, non-ASCII digits
    "👩\u200d💻",
    "🏳️\u200d🌈",
    "😀",
    "ﷺ",
    "ﬃ",
    "İ",
    "ß",
    "ΐ",  # emoji, ligatures, case-fold expanders
]
PIECES = [
    "1000",
    ":",
    "1002",
    "1000:",
    "1000:1002",
    "Error: ",
    "error",
    "code",
    "err",
    " ",
    "  ",
    "**",
    "_",
    "`",
    "[x](y)",
    "![i](u)",
    "<@all>",
    "#",
    ">",
    "&lt;",
    "sign in",
    "blank screen",
    "okta",
    "saml",
    "can't",
    "log in",
    "SSOCertificateError",
    "9",
    "0",
    "-",
    "/",
    ".",
    "(",
    ")",
]

any_char = st.characters(codec=None, exclude_categories=())  # includes Cs (surrogates) and Cc
hostile_text = st.one_of(
    st.text(any_char, max_size=400),
    st.lists(st.sampled_from(TRICKY + list("1000:error ")), max_size=400).map("".join),
    st.lists(st.sampled_from(PIECES + TRICKY), max_size=120).map("".join),
    # Long repetitions of a short unit: the shape of pasted logs and of regex-blow-up attempts.
    st.builds(
        lambda unit, n: unit * n,
        st.lists(st.sampled_from(PIECES + TRICKY), min_size=1, max_size=4).map("".join),
        st.integers(1, 6000),
    ),
)


@functools.cache
def knowledge() -> tuple[KnowledgeBase, TriageIndex, TriageIndex]:
    """The real knowledge, its index, and a second index built independently (results must not depend on
    one index object). Module-level rather than fixtures so hypothesis failure reports stay readable."""
    kb = load_knowledge(KNOWLEDGE_DIR)
    return kb, TriageIndex.build(kb), TriageIndex.build(kb)


def timed(fn: Callable[[], TriageResult]) -> TriageResult:
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    assert elapsed < PER_CALL_SECONDS, f"triage took {elapsed:.3f}s"
    return result


def check_well_formed(result: TriageResult, kb: KnowledgeBase) -> None:
    assert isinstance(result, TriageResult)
    assert result.outcome in ("fix", "clarify", "none")
    assert len(result.matches) <= LIMIT
    ids = [m.id for m in result.matches]
    assert len(ids) == len(set(ids)), f"duplicate matches {ids}"
    for m in result.matches:
        assert m.id in kb.articles, f"match {m.id!r} is not a knowledge article"
        assert 0.0 <= m.score <= 1.0, m
        assert m.evidence in ("code", "name", "text", "number")
        assert all(r in kb.articles and r != m.id for r in m.related), m
    scores = [m.score for m in result.matches]
    assert scores == sorted(scores, reverse=True), f"matches not ranked: {scores}"
    if result.outcome != "none":
        assert result.matches, "an answer or a question needs at least one match"
    assert len(set(result.codes)) == len(result.codes)
    assert all(c in kb.articles for c in result.codes), result.codes
    assert len(result.unknown_codes) <= MAX_CODES
    for code in result.unknown_codes:
        assert UNKNOWN_CODE.match(code) and code not in kb.articles, code
    # The result must serialise cleanly (it is logged and returned by the CLI).
    json.dumps(result.to_json(), allow_nan=False)


@HOSTILE
@given(text=hostile_text)
def test_triage_never_raises_and_is_well_formed(text: str) -> None:
    kb, index, _ = knowledge()
    check_well_formed(timed(lambda: triage(text, index)), kb)


@HOSTILE
@given(text=hostile_text, limit=st.integers(1, 12))
def test_triage_respects_any_limit(text: str, limit: int) -> None:
    _, index, _ = knowledge()
    result = triage(text, index, limit=limit)
    assert len(result.matches) <= limit


@HOSTILE
@given(text=hostile_text)
def test_triage_is_deterministic(text: str) -> None:
    _, index, second_index = knowledge()
    first = triage(text, index)
    assert triage(text, index) == first
    assert triage(text, second_index) == first
    assert json.dumps(triage(text, index).to_json()) == json.dumps(first.to_json())


@HOSTILE
@given(text=hostile_text)
def test_normalize_and_content_tokens_are_total_and_clean(text: str) -> None:
    start = time.perf_counter()
    _, index, _ = knowledge()
    norm = normalize(text)
    tokens = index.lexicon.tokens(text)
    assert time.perf_counter() - start < PER_CALL_SECONDS
    assert isinstance(norm, str)
    assert not CLEANED & set(norm), f"normalize left {CLEANED & set(norm)!r}"
    assert normalize(text) == norm and index.lexicon.tokens(text) == tokens
    assert len(tokens) <= MAX_TOKENS
    assert all(TOKEN.match(t) and not t.isdigit() for t in tokens), tokens


# --- Codes survive whatever surrounds them ---------------------------------------------------------

# Surrounding text may hold anything except digits glued to the code (that would be another number).
surrounding = st.text(any_char, max_size=3000)


@HOSTILE
@given(prefix=surrounding, suffix=surrounding, before=st.sampled_from(["", "Error: ", "error ", "\u202e"]))
def test_a_code_is_found_wherever_it_sits(prefix: str, suffix: str, before: str) -> None:
    kb, index, _ = knowledge()
    text = f"{prefix} {before}1000:1002 {suffix}"
    result = timed(lambda: triage(text, index))
    check_well_formed(result, kb)
    assert "1000:1002" in result.codes, (text[:200], result)
    assert "1000:1002" in [m.id for m in result.matches], result


@pytest.mark.parametrize(
    "text",
    [
        "Ｅrror: 1000:1002",  # full-width E
        "Еrror: 1000:1002",  # Cyrillic E
        "ＥＲＲＯＲ：１０００：１００２",
        "\u202eError: 1000:1002\u202c",  # RTL override around it
        "\u2067Error: 1000:1002\u2069",  # isolate
        "Error\u200b: 1000:1002",  # zero-width space before the colon
        "👩\u200d💻 Error: 1000:1002 😀😀",
        "Error: 1000:1002\u0301\u0301",  # combining marks after it
        "\x00Error: 1000:1002\x00",
        "**Error: 1000:1002**" * 50,
        "> `Error: 1000:1002`",
        "e\u0301rror 1000:1002",
    ],
)
def test_unicode_tricks_around_a_code_do_not_hide_it(
    text: str, index: TriageIndex, kb: KnowledgeBase
) -> None:
    result = timed(lambda: triage(text, index))
    check_well_formed(result, kb)
    assert result.outcome == "fix" and result.matches[0].id == "1000:1002", result


INVISIBLE = {
    "ZWSP": "\u200b",
    "ZWNJ": "\u200c",
    "ZWJ": "\u200d",
    "word joiner": "\u2060",
    "BOM": "\ufeff",
    "soft hyphen": "\u00ad",
    "LRM": "\u200e",
    "PDF": "\u202c",
}


def test_invisible_format_characters_inside_a_code_do_not_hide_it() -> None:
    # Text copied from web pages, PDFs and chat clients carries these; the user sees "1000:1002" on screen.
    _, index, _ = knowledge()
    wrong = {}
    for name, invisible in INVISIBLE.items():
        for text in (f"Error: 1000{invisible}:1002", f"Error: 1000:10{invisible}02"):
            result = triage(text, index)
            if result.codes != ("1000:1002",) or result.unknown_codes:
                wrong[f"{name} in {text!r}"] = (result.codes, result.unknown_codes)
    assert not wrong, f"invisible characters hid the code or made a phantom one: {wrong}"


SEPARATORS = {
    "space": " ",
    "newline": "\n",
    "tab": "\t",
    "ideographic space": "\u3000",
    "parenthesis": "(",
    "comma": ",",
    "equals": "=",
    "glued to a word": "",
}


def test_a_code_cut_by_the_scan_cap_is_not_reported_as_another_code() -> None:
    # A pasted log whose code straddles the scan cap: "1000:1002" must not turn into 1000:1 / 1000:10 /
    # 1000:100 (two of those are real catalogue codes, so the user would get the wrong fix). Logs are
    # not always spaced: the code may follow a newline, a tab, a bracket or sit glued to a word.
    _, index, _ = knowledge()
    code = "1000:1002"
    wrong = {}
    for name, separator in SEPARATORS.items():
        for kept in range(1, len(code)):
            filler = ("x" * 99 + "\n") * (MAX_CODE_SCAN_CHARS // 100)  # lines without spaces
            text = filler[: MAX_CODE_SCAN_CHARS - kept - len(separator)] + separator + code + " more log"
            assert text.index(code) + kept == MAX_CODE_SCAN_CHARS
            result = triage(text, index)
            reported = [c for c in (*result.codes, *result.unknown_codes) if c != code]
            if reported:
                wrong[f"{name}, cut after {code[:kept]!r}"] = reported
    assert not wrong, f"a code cut at the scan cap was reported as another code: {wrong}"


# --- Pathological strings: bounded work, well-formed answers -----------------------------------------

PATHOLOGICAL = {
    "50k digits": "1" * 50_000,
    "50k digits and colons": "1:" * 25_000,
    "digits colons mixed": "1000:1000:" * 5_000,
    "1000: x20000": "1000:" * 20_000,
    "1000 : x20000": "1000 : " * 20_000,
    "1000 1000 ...": "1000 " * 20_000,
    "error error ...": "error " * 20_000,
    "error 1 ...": "error 1 " * 15_000,
    "err1err1": "err1" * 25_000,
    "100 KB of words": "blank screen when I sign in to phone services " * 2_200,
    "100 KB of typos": "blnk scren whn sgn inn phne srvces " * 3_000,
    "100 KB of distinct words": " ".join(f"w{i}q" for i in range(20_000)),
    "100 KB of distinct numbers": " ".join(str(i) for i in range(20_000)),
    "deep markdown": "**_`[![x](" * 10_000 + "Error: 1000:1002" + ")](y)`_**" * 10_000,
    "nested quotes": "> " * 50_000 + "blank screen",
    "RTL and zero-width": "\u202e\u200d\u200b\u2066" * 25_000,
    "combining marks": "e" + "\u0301" * 100_000,
    "lone surrogates": "\ud800\udfff" * 50_000,
    "NUL bytes": "\x00" * 100_000,
    "controls": "".join(chr(c) for c in range(32)) * 3_000,
    "NFKC expanders": "\ufdfa" * 20_000,  # one code point becomes 18
    "emoji ZWJ": "👩\u200d👩\u200d👧\u200d👦" * 15_000,
    "CamelCase soup": "ServiceDiscovery" * 6_000,
    "synonym soup": "log in sign on can not user name " * 3_000,
    "one huge token": "a" * 100_000,
    "whitespace": " \t\n" * 40_000,
    "code at the end of 100 KB": "x " * 50_000 + "Error: 1000:1002",
}


@pytest.mark.parametrize("text", list(PATHOLOGICAL.values()), ids=list(PATHOLOGICAL))
def test_pathological_inputs_cost_bounded_work(text: str, index: TriageIndex, kb: KnowledgeBase) -> None:
    check_well_formed(timed(lambda: triage(text, index)), kb)
    start = time.perf_counter()
    index.lexicon.tokens(text)
    assert time.perf_counter() - start < PER_CALL_SECONDS


def test_a_long_paste_is_not_slower_than_its_capped_prefix(index: TriageIndex) -> None:
    # Work is capped: 1 MB costs about what the first 20,000 characters cost (no hidden pass over it all).
    huge = "Error: 1000:1002 blank screen when I sign in " * 25_000
    start = time.perf_counter()
    result = triage(huge, index)
    elapsed = time.perf_counter() - start
    assert elapsed < PER_CALL_SECONDS, elapsed
    assert result.matches[0].id == "1000:1002"
