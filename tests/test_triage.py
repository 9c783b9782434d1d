"""Triage: code extraction in every typed form, fuzzy symptoms, the confidence ladder, and input guards."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.context import Knowledge
from bot.knowledge import KnowledgeBase
from bot.triage import (
    CONFIDENT_AT,
    MAX_CORRECTIONS,
    TriageIndex,
    TriageResult,
    message_language,
    normalize,
    split_name,
    triage,
)
from bot.triage.normalise import words
from bot.triage.rank import LONG_WORDS

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Error: 1000:1002", "1000:1002"),
        ("Error:1000:8", "1000:8"),
        ("1000:1002", "1000:1002"),
        ("it says 1000 : 1006 again", "1000:1006"),
        ("1000/603 on my laptop", "1000:603"),
        ("err 1000-1008", "1000:1008"),
        ("1000–1005 (en dash from Word)", "1000:1005"),
        ("error 1002", "1000:1002"),
        ("code 603", "1000:603"),
        ("error code: 1100 in calling", "1000:1100"),
        ("(error 600)", "1000:600"),
        ("getting a 1007 error", "1000:1007"),
        ("SSOCertificateError", "1000:603"),
        ("sso certificate error at login", "1000:603"),
        ("ssowhoamifailure", "1000:605"),
        ("ServiceDiscoveryNoSRVRecordsFound", "1000:1005"),
        ("**Error: 1000:606**", "1000:606"),
        ("ＥＲＲＯＲ　１０００：１００２ (full-width)", "1000:1002"),
    ],
)
def test_codes_in_every_form(text: str, code: str, index: TriageIndex) -> None:
    result = triage(text, index)
    assert result.confident, result
    assert result.matches[0].id == code


@pytest.mark.parametrize(
    ("text", "article"),
    [
        ("Can't find your SRV record", "1000:1005"),
        ("No service discovered due to an untrusted certificate from server", "1000:1008"),
        ("blnk screen when I log into webex", "blank-screen"),
        ("incorect usename or pasword", "1000:1002"),
        ("Single sign-on failed. Invalid status code in response.", "sso-failed"),
        ("how do I set up okta sso for webex", "okta-saml-setup"),
        ("what saml attributes does webex need", "saml-attributes"),
    ],
)
def test_messages_and_symptoms_with_typos(text: str, article: str, index: TriageIndex) -> None:
    result = triage(text, index)
    assert result.confident, result
    assert result.matches[0].id == article


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "thanks!",
        "ok",
        "error 404 on the intranet",
        "the printer on floor 2 is jammed",
        "my vpn keeps dropping",
        "audio is choppy in meetings",
        "my webcam is not detected",
        "how do I get a developer access token for the webex api",
        "",
        "   ",
        "🙂🙂🙂",
        "1000:9999",
    ],
)
def test_out_of_scope_is_never_confident(text: str, index: TriageIndex) -> None:
    assert not triage(text, index).confident


def test_unknown_catalogue_number_matches_nothing(index: TriageIndex) -> None:
    result = triage("Error: 1000:4242 after the update", index)
    assert result.matches == () and result.unknown_codes == ("1000:4242",)
    assert triage("error 404", index).codes == ()


def test_several_codes_all_answered_in_order(index: TriageIndex) -> None:
    result = triage("first 1000:1005, then Error: 1000:1006 and later error 603", index)
    assert result.confident
    assert result.codes == ("1000:1005", "1000:1006", "1000:603")
    assert [m.id for m in result.matches[:3]] == list(result.codes)


def test_identical_messages_are_answered_with_the_twin_named(index: TriageIndex) -> None:
    result = triage("Can't find your phone service. Check your phone service preferences.", index)
    assert result.confident
    best = result.matches[0]
    assert {best.id, *best.related} == {"1000:1001", "1000:1004"}


def test_vague_message_asks_which(index: TriageIndex) -> None:
    result = triage("sso", index)
    assert result.outcome in {"clarify", "none"} and not result.confident


def test_bare_number_alone_is_only_a_hint(index: TriageIndex) -> None:
    assert not triage("my extension is 1005", index).confident
    corroborated = triage("whoami failure 605 on phone service", index)
    assert corroborated.confident and corroborated.matches[0].id == "1000:605"


def test_scores_are_ranked_and_bounded(index: TriageIndex) -> None:
    for text in ["blank screen", "Error 1000:1002 incorrect password", "sso failed", "okta"]:
        scores = [m.score for m in triage(text, index).matches]
        assert scores == sorted(scores, reverse=True)
        assert all(0.0 <= s <= 1.0 for s in scores)


def test_json_contract(index: TriageIndex) -> None:
    payload = triage("Error: 1000:1002", index).to_json()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["confident"] is True
    assert isinstance(payload["matches"], list)
    assert {"id", "score"} <= set(payload["matches"][0])


def test_control_characters_and_markdown_are_harmless(index: TriageIndex) -> None:
    text = "\x00\x07**blank**\u202e `screen`\r\n> quoted [x](y)"
    assert normalize(text).isprintable() or "\n" in normalize(text)
    assert triage(text, index).matches[0].id == "blank-screen"


def test_huge_and_pathological_inputs_are_bounded(index: TriageIndex) -> None:
    for text in ["1000:" * 20_000, "9" * 50_000, ":" * 50_000, "blank screen " * 10_000, "a" * 100_000]:
        start = time.perf_counter()
        triage(text, index)
        # Generous: this guards against quadratic blow-ups (seconds), not micro-performance (see bench/).
        assert time.perf_counter() - start < 0.5


def test_code_far_into_a_pasted_log_is_still_found(index: TriageIndex) -> None:
    text = "log line\n" * 1500 + "Error: 1000:1002"
    assert triage(text, index).matches[0].id == "1000:1002"


def test_split_name() -> None:
    assert split_name("ServiceDiscoveryNoSRVRecordsFound") == [
        "service",
        "discovery",
        "no",
        "srv",
        "records",
        "found",
    ]
    assert split_name("SSOWhoAmIFailure") == ["sso", "who", "am", "i", "failure"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_any_text_is_deterministic_and_never_raises(text: str) -> None:
    index = _index()
    first = triage(text, index)
    assert triage(text, index) == first
    assert all(0.0 <= m.score <= 1.0 for m in first.matches)


_CACHE: dict[str, TriageIndex] = {}


def _index() -> TriageIndex:
    # hypothesis dislikes function-scoped fixtures; build the index once for the property test.
    if "i" not in _CACHE:
        from bot.knowledge import load_knowledge

        from .conftest import KNOWLEDGE_DIR

        _CACHE["i"] = TriageIndex.build(load_knowledge(KNOWLEDGE_DIR))
    return _CACHE["i"]


def _load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


# Bars per labelled set (tests/data/README.md says where each comes from): in-scope top-1 (the first match is a
# right one and the answer confident), the share of out-of-scope lines answered confidently, and for the
# non-English sets the share of lines whose language is detected. Triage runs as the bot runs it: the message's
# language picks the index.
QUALITY_BARS = [
    # The public labelled set: the product's quality bar.
    ("triage_public.jsonl", 0.95, 0.05, None),
    # Independent sets written from the seed by people who never saw the code (a-c were read while tuning).
    ("triage_holdout.jsonl", 0.9, 0.05, None),
    ("triage_dev_a.jsonl", 0.9, 0.05, None),
    ("triage_dev_b.jsonl", 0.9, 0.05, None),
    ("triage_dev_c.jsonl", 0.9, 0.05, None),
    ("triage_sealed_d.jsonl", 0.9, 0.05, None),
    # Long reports and five languages, written by helpers who saw only the seed and the list of label ids. The
    # dev halves were read while tuning; the bars are what they reach, where that is below the 0.90 / 3% / 97%
    # the product asks for (README "Triage" says which are short of it).
    ("triage_long_dev.jsonl", 0.75, 0.03, None),
    ("triage_de_dev.jsonl", 0.85, 0.03, 0.97),
    ("triage_fr_dev.jsonl", 0.9, 0.03, 0.97),
    ("triage_es_dev.jsonl", 0.9, 0.03, 0.97),
    ("triage_pt_dev.jsonl", 0.9, 0.03, 0.93),
    ("triage_it_dev.jsonl", 0.88, 0.03, 0.95),
    # Their sealed halves, measured once at the end of stop 18 (bench/results/quality.json); the bars are that
    # measurement, so a change that makes them worse fails here.
    ("triage_long_sealed.jsonl", 0.74, 0.04, None),
    ("triage_de_sealed.jsonl", 0.9, 0.02, 0.93),
    ("triage_fr_sealed.jsonl", 0.91, 0.0, 0.96),
    ("triage_es_sealed.jsonl", 0.87, 0.02, 0.98),
    ("triage_pt_sealed.jsonl", 0.89, 0.02, 0.86),
    ("triage_it_sealed.jsonl", 0.87, 0.0, 0.97),
]


@pytest.fixture(scope="module")
def knowledge(kb: KnowledgeBase) -> Knowledge:
    return Knowledge.build(kb)


@pytest.mark.parametrize(("name", "min_top1", "max_oos_confident", "min_lang"), QUALITY_BARS)
def test_quality_bar(
    name: str, min_top1: float, max_oos_confident: float, min_lang: float | None, knowledge: Knowledge
) -> None:
    rows = _load(name)
    in_scope = [r for r in rows if r["expect"]]
    out_scope = [r for r in rows if not r["expect"]]
    for r in rows:
        assert set(r["expect"]) <= knowledge.kb.articles.keys(), f"label names an unknown article: {r}"

    def run(text: str) -> TriageResult:
        return triage(text, knowledge.index_for(message_language(text, knowledge.index) or "en"))

    hits = 0
    for r in in_scope:
        result = run(str(r["text"]))
        hits += bool(result.confident and result.matches and result.matches[0].id in r["expect"])
    false_confident = sum(run(str(r["text"])).confident for r in out_scope)
    top1 = hits / len(in_scope)
    oos = false_confident / len(out_scope)
    assert top1 >= min_top1, f"{name}: in-scope top-1 {top1:.3f} < {min_top1}"
    assert oos <= max_oos_confident, f"{name}: confident on {oos:.3f} of out-of-scope lines"
    if min_lang is not None:
        right = sum(message_language(str(r["text"]), knowledge.index) == r["lang"] for r in rows)
        assert right / len(rows) >= min_lang, f"{name}: language right on {right / len(rows):.3f}"


def test_pruned_search_gives_the_exhaustive_answers(kb: KnowledgeBase, index: TriageIndex) -> None:
    # Common words only add to phrases a rarer word found (or made of common words alone): that must change
    # no outcome and no best answer against scoring every phrase the message touches.
    exhaustive = TriageIndex.build(kb, common_share=2.0)
    assert index.posting_sets and not exhaustive.posting_sets
    # The sealed sets stay unread until their one measurement (bench/quality.py --sealed).
    sets = [p for p in sorted(DATA.glob("triage_*.jsonl")) if not p.name.endswith("_sealed.jsonl")]
    # Messages short enough to be judged whole: a long one's sentences are scored again, each on its own, and
    # there the pruning may tip a near tie between two candidates (bench/quality.py measures those sets).
    texts = [
        str(r["text"])
        for path in sets
        for r in _load(path.name)
        if len(words(normalize(r["text"]))) <= LONG_WORDS
    ]
    assert len(texts) > 1000
    for text in texts:
        pruned, full = triage(text, index), triage(text, exhaustive)
        assert pruned.outcome == full.outcome, text
        if pruned.outcome != "none":  # "none" answers nothing: its weak leader is not an answer to keep equal
            # The best answer and its score; the twins listed beside it may differ in the long tail.
            best = [(m.id, m.score, m.evidence) for m in pruned.matches[:1]]
            assert best == [(m.id, m.score, m.evidence) for m in full.matches[:1]], text


@pytest.mark.parametrize(
    "text",
    [
        "error 500 on the HR portal",
        "the ERP throws error 600 when posting invoices",
        "copier says code 1001 paper jam",
        "badge reader by the lift shows error code 1005",
    ],
)
def test_a_bare_number_on_another_system_is_no_code(text: str, index: TriageIndex) -> None:
    result = triage(text, index)
    assert not result.confident and result.codes == (), result


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("error 500 in webex calling", "1000:500"),  # a Webex word: the same number is a code
        ("my account is still being set up i think? webex phone gives error 701", "1000:701"),
        ("code 605", "1000:605"),
        ("the SSO page never loads, code is 400", "1000:400"),
        ("err 1000;7 pls help", "1000:7"),  # a semicolon typed for the colon
        ("sso page wont load, error 1000.600", "1000:600"),
    ],
)
def test_bare_numbers_and_odd_separators_in_webex_context(text: str, code: str, index: TriageIndex) -> None:
    result = triage(text, index)
    assert result.confident and result.matches[0].id == code, result


def test_a_dot_after_1000_is_an_amount_unless_a_code_follows(index: TriageIndex) -> None:
    for text in ["the invoice was $1000.99", "version 1000.5 is out"]:
        result = triage(text, index)
        assert result.codes == () and result.unknown_codes == (), (text, result)


def test_any_code_outranks_a_verbatim_text(index: TriageIndex) -> None:
    # 1000:500 and 1000:602 share their message; the number says which one it is.
    result = triage("err#602 failed to start new sso session", index)
    assert result.confident and result.matches[0].id == "1000:602"
    assert all(m.score < result.matches[0].score for m in result.matches[1:])


def test_a_written_out_code_is_answered_without_the_fuzzy_match(index: TriageIndex) -> None:
    result = triage("Error: 1000:1005 and my screen is blank when signing in", index)
    assert [m.id for m in result.matches] == ["1000:1005"] and result.codes == ("1000:1005",)


def test_turning_saml_on_and_off_are_different_questions(index: TriageIndex) -> None:
    on = triage("what happens to users when we turn on saml for webex", index)
    off = triage("how do we turn off saml for webex", index)
    assert on.matches[0].id == "saml-before-enable", on
    assert off.matches[0].id == "saml-backup-url", off


def test_the_article_that_knows_every_word_wins_over_a_short_phrase(index: TriageIndex) -> None:
    # "Sign into Webex Meetings" (cant-sign-in) shares only "meetings" with this message.
    result = triage("as a host how do i keep uninvited people out of my webex meetings", index)
    assert [m.id for m in result.matches[:2]] == ["secure-meetings", "cant-sign-in"], result


def test_a_specific_code_dominates_the_message_it_shares(index: TriageIndex) -> None:
    # Eleven codes share "Sign into your account to use your phone services"; cancelling the SSO window is 601.
    text = "I hit cancel on the SSO popup and now it says Sign into your account to use your phone services"
    result = triage(text, index)
    assert result.confident and result.matches[0].id == "1000:601", result


def test_host_names_are_telling_words(index: TriageIndex) -> None:
    result = triage("after okta is set up do users just go to teams.webex.com and enter their email?", index)
    assert result.confident and result.matches[0].id == "sp-initiated-sso", result


def test_plural_markers_and_unknown_words_keep_near_misses_unsure(index: TriageIndex) -> None:
    for text in [
        "how many webex licenses are left",  # marker "license" in the plural
        "can you book me a meeting room",
        "forgot my SAP password",
        "how do webhooks authenticate",
    ]:
        assert not triage(text, index).confident, text


def test_a_clear_winner_below_the_confident_bar_is_answered(index: TriageIndex) -> None:
    result = triage("can we use azure ad as the identity provider for webex", index)
    assert result.confident and result.matches[0].id == "azure-ad-sso", result
    assert result.matches[0].score < CONFIDENT_AT  # answered for its lead, not its score


def test_typo_memory_is_bounded_and_changes_no_answer(kb: KnowledgeBase) -> None:
    fresh = TriageIndex.build(kb)
    text = "blnk screan after I lgin to webx on my laptopp"
    first = triage(text, fresh)
    assert fresh.corrections, "the typo searches of the first message are remembered"
    assert triage(text, fresh) == first
    for n in range(MAX_CORRECTIONS + 50):  # a stream of words nobody repeats
        fresh.correct(f"qzx{n:05d}")
    assert len(fresh.corrections) <= MAX_CORRECTIONS
    assert triage(text, fresh) == first == triage(text, TriageIndex.build(kb))


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("webex is broken", "en"),
        ("Webex doesn't work", "en"),
        ("webex phone not working", "en"),
        ("Webex geht nicht", "de"),
        ("webex ne marche pas", "fr"),
    ],
)
def test_a_vague_message_gets_the_broad_choices(text: str, lang: str, kb: KnowledgeBase) -> None:
    result = triage(text, TriageIndex.build(kb, lang=lang))
    assert result.outcome == "clarify" and not result.confident
    assert [m.id for m in result.matches] == list(kb.broad_choices)
    assert {m.evidence for m in result.matches} == {"broad"}


@pytest.mark.parametrize(
    "text",
    [
        "blank screen when I sign in to webex",
        "my webex camera is broken",
        "Error: 1000:1002",
        "hello",
        "webex login broken",
    ],
)
def test_a_message_that_says_something_is_not_vague(text: str, index: TriageIndex) -> None:
    assert all(m.evidence != "broad" for m in triage(text, index).matches)


@pytest.mark.parametrize(
    ("text", "lang", "code"),
    [
        ("Meine Webex Telefonie zeigt Fehler 1006", "de", "1000:1006"),
        ("j'ai l'erreur 603 sur webex", "fr", "1000:603"),
        ("me sale el código 1002 en webex", "es", "1000:1002"),
        ("aparece erro 606 no webex", "pt", "1000:606"),
        ("errore 1004 su webex", "it", "1000:1004"),
    ],
)
def test_error_and_code_words_in_each_language_mark_a_bare_code(
    text: str, lang: str, code: str, kb: KnowledgeBase
) -> None:
    result = triage(text, TriageIndex.build(kb, lang=lang))
    assert result.confident and result.codes == (code,), result


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("Ich kann mich nicht bei Webex anmelden, der Bildschirm bleibt weiß", "de"),
        ("mon mot de passe Webex ne marche pas depuis ce matin", "fr"),
        ("la pantalla se queda en blanco cuando inicio sesión en webex", "es"),
        ("minha senha do webex expirou e não consigo entrar", "pt"),
        ("la password di webex è scaduta e non riesco ad accedere", "it"),
        ("My Webex password expired this morning and I cannot sign in", "en"),
    ],
)
def test_the_language_of_a_message_is_detected(text: str, lang: str, index: TriageIndex) -> None:
    from bot.triage import message_language

    assert message_language(text, index) == lang


def test_pasted_english_error_text_does_not_hide_the_language(index: TriageIndex) -> None:
    from bot.triage import message_language

    text = "Hallo, seit heute steht da 'Your session has expired. Try signing into your phone service again.' was tun?"
    assert message_language(text, index) == "de"
    # Too little of its own to tell: a short follow-up keeps the conversation's language.
    assert message_language("merci", index) is None and message_language("ja", index) is None


def test_another_languages_index_is_built_on_first_use_and_kept(kb: KnowledgeBase) -> None:
    knowledge = Knowledge.build(kb)
    assert set(knowledge.indexes) == {"en"}
    german = knowledge.index_for("de")
    assert german.lang == "de" and knowledge.index_for("de") is german
    assert knowledge.index_for("xx") is knowledge.index and knowledge.kb_for("xx") is knowledge.kb
    assert knowledge.kb_for("fr").articles["1000:1002"].lang == "fr"
