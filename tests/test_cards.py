"""Cards: official 1.3 schema, Webex limits, typed submit payloads and escaping, over the real knowledge base."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bot import cards
from bot.cards import (
    ADMIN_NOTE,
    CARD_CONTENT_TYPE,
    MAX_BODY_BYTES,
    EscalateData,
    FeedbackData,
    OutgoingMessage,
    SetupPageData,
    ShowData,
    article_card,
    body_bytes,
    build,
    clarify_card,
    escape_user_text,
    feedback_ack,
    fix_card,
    help_card,
    not_sure_card,
    parse_submit,
    refusal,
    setup_guide_card,
)
from bot.cards.draft import Draft, Prompt, form
from bot.cards.elements import (
    ActionOpenUrl,
    ActionShowCard,
    ActionSubmit,
    AdaptiveCard,
    Container,
    Fact,
    FactSet,
    InputText,
    TextBlock,
)
from bot.cards.submit import AnswerInfoData, AskInfoData, FileTicketData, SubmitData
from bot.gaps import find_gaps
from bot.knowledge import Article, KnowledgeBase, Step
from bot.store.records import GapQuestion, Stats, Ticket
from bot.triage import Match, TriageIndex, TriageResult, triage
from bot.triage.normalise import Lexicon

from .conftest import SHARED

SCHEMA_PATH = SHARED / "reference" / "adaptive-card-1.3.schema.json"
# Realistic Webex ids: base64 of ciscospark://us/MESSAGE/<uuid> and ciscospark://us/ROOM/<uuid>.
THREAD = "Y2lzY29zcGFyazovL3VzL01FU1NBR0UvOTJkYjNiZTAtNDNiZC0xMWU2LThhZTktZGQ1YjNkZmM1NjVk"
ROOM = "Y2lzY29zcGFyazovL3VzL1JPT00vYmJjZWIxYWQtNDNmMS0zYjU4LTkxNDctZjE0YmIwYzRkMTU0"
EMAIL = "firstname.middlename.lastname-department@subsidiary.example-corporation.com"

INJECTIONS = (
    "<@all>",
    "[click](http://evil)",
    "<script>alert(1)</script>",
    "![img](x)",
    "<@personEmail:boss@example.com>",
    "@ALL please",
    "`rm -rf`",
    "**shout**",
    "&lt;@all&gt;",
)
# Substrings that would mean an injection survived into what Webex renders.
RAW_TOKENS = (
    "<@",
    "<script",
    "[click]",
    "](http://evil",
    "![img]",
    "](x)",
    "`rm",
    "**shout**",
    "&lt;",
    "http://evil",
)


# --- Helpers -------------------------------------------------------------------------------------


def walk(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a card, depth first (ShowCard cards included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def submits(card: dict[str, Any]) -> list[dict[str, Any]]:
    return [n["data"] for n in walk(card) if n.get("type") == "Action.Submit"]


def texts(card: dict[str, Any]) -> list[str]:
    out = [n["text"] for n in walk(card) if n.get("type") == "TextBlock"]
    return out + [n["value"] for n in walk(card) if "value" in n and "title" in n]


def all_text(message: OutgoingMessage) -> str:
    return message.markdown + "\n" + "\n".join(texts(message.card or {}))


def nested_cards(card: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield card
    for node in walk(card.get("actions", [])):
        if node.get("type") == "Action.ShowCard":
            yield from nested_cards(node["card"])


@pytest.fixture(scope="session")
def validator() -> jsonschema.Draft6Validator:
    if not SCHEMA_PATH.exists():
        pytest.fail(f"the official Adaptive Cards 1.3 schema is expected at {SCHEMA_PATH}; it is not there")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft6Validator.check_schema(schema)
    return jsonschema.Draft6Validator(schema)


def schema_errors(validator: jsonschema.Draft6Validator, card: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(card)]


@pytest.fixture(scope="session")
def all_messages(kb: KnowledgeBase, index: TriageIndex) -> list[tuple[str, OutgoingMessage]]:
    """Every builder over every article, plus real triage results for each article's own words."""
    out: list[tuple[str, OutgoingMessage]] = []
    for article in kb.articles.values():
        out.append((f"article_card {article.id}", article_card(article, kb, THREAD)))
        single = TriageResult(
            "fix", (Match(article.id, 1.0, "code"),), codes=(article.id,) if article.code else ()
        )
        out.append((f"fix_card {article.id}", fix_card(single, kb, THREAD)))
        for text in {article.title, article.message, article.code, *article.phrases[:2]} - {None}:
            assert text is not None
            out.append((f"build {text!r}", build(triage(text, index), kb, THREAD, text)))
    ids = list(kb.articles)
    for i in range(len(ids)):
        window = ids[i : i + 3]
        result = TriageResult("clarify", tuple(Match(x, 0.7, "text") for x in window))
        out.append((f"clarify_card {window}", clarify_card(result, kb, THREAD)))
    every_code = " ".join(f"Error: {a.code}" for a in kb.errors)
    out.append(("fix_card many codes", fix_card(triage(every_code, index), kb, THREAD)))
    related = "Sign into your account to use your phone services"
    out.append(("build related", build(triage(related, index), kb, THREAD, related)))
    for injection in INJECTIONS:
        out.append((f"not_sure {injection!r}", not_sure_card(f"help {injection}", kb, THREAD)))
    out.append(("not_sure codes", not_sure_card("x 1000:9999", kb, THREAD, ("1000:9999", "1000:8888"))))
    out.append(("not_sure long", not_sure_card("blah " * 5000, kb, THREAD, ("<@all>",) * 50)))
    for is_admin in (False, True):
        out.append((f"help admin={is_admin}", help_card(kb, is_admin)))
        out.append(
            (
                f"help admin={is_admin} thread",
                help_card(
                    kb, is_admin, thread_id=THREAD, admin_commands=[("stats", "numbers"), ("reload", "x")]
                ),
            )
        )
    guide = kb.setup_guide
    assert guide is not None
    for page in range(-1, len(guide.steps) + 2):
        for size in (1, 4, 100):
            out.append((f"setup page={page} size={size}", setup_guide_card(kb, page, THREAD, page_size=size)))
    out += [
        ("feedback yes", feedback_ack(True, kb)),
        ("feedback no", feedback_ack(False, kb)),
        ("refusal", refusal("I only help people in example.com.")),
        *admin_messages(kb),
    ]
    return out


def admin_messages(kb: KnowledgeBase) -> list[tuple[str, OutgoingMessage]]:
    """The admin builders, with the odd input each must survive (injections, long texts, many groups)."""
    at = datetime(2026, 11, 29, tzinfo=UTC)
    asked = [*INJECTIONS, "blank screen " * 200, "no sound from my headset", "printer jammed"]
    questions = [
        GapQuestion(text, "none" if n % 3 else "fix", "blank-screen" if n % 2 else None, n % 3 == 0, at)
        for n, text in enumerate(asked * 3)
    ]
    gaps = find_gaps(questions, Lexicon.from_words(kb.words), limit=50)
    stats = Stats(
        100, 70, 10, 20, 9, 3, 5, 9, 40, [("1000:1002", 9)], [("blank-screen", 7)], 2, 60.0, None, 3, 7
    )
    return [
        ("gaps", cards.gaps_card(gaps, 30, len(questions), kb)),
        ("gaps none", cards.gaps_card([], 7, 0, kb)),
        ("stats stuck deliveries", cards.stats_card(stats, 30, kb)),
        (
            "reload replicas",
            cards.reload_done(["a"], [], ["b"], 49, replicas=(1, 3, ["<@all> x", "y" * 900])),
        ),
    ]


def test_admin_cards_say_what_they_count(kb: KnowledgeBase) -> None:
    messages = dict(admin_messages(kb))
    stats = messages["stats stuck deliveries"].markdown
    assert "**Stuck ITSM deliveries:** 3 gave up, holding back 7 later event(s)" in stats
    assert "`python -m bot outbox list`" in stats
    gaps = messages["gaps"]
    assert gaps.card is not None and "<@all>" not in json.dumps(gaps.card) and "<@all>" not in gaps.markdown
    assert (
        "**1. " in gaps.markdown
        and "The bot offered most: Sign-in to Webex shows a blank screen" in gaps.markdown
    )
    assert "None: every question got a confident answer" in messages["gaps none"].markdown
    reload = messages["reload replicas"].markdown
    assert "Replicas: 1 of 3 took it." in reload and "<@all>" not in reload


# --- Every card the bot can send -----------------------------------------------------------------


def test_every_card_validates_against_the_official_schema(
    all_messages: list[tuple[str, OutgoingMessage]], validator: jsonschema.Draft6Validator
) -> None:
    with_cards = [(name, m.card) for name, m in all_messages if m.card is not None]
    assert len(with_cards) > 150, "the matrix should cover every article several times"
    failures = {name: errs for name, card in with_cards if (errs := schema_errors(validator, card))}
    assert not failures, json.dumps(failures, indent=1)[:4000]


def test_every_message_is_webex_shaped_and_fits(all_messages: list[tuple[str, OutgoingMessage]]) -> None:
    for name, message in all_messages:
        assert message.markdown.strip(), name
        for body in (message.to_webex(ROOM, THREAD), message.to_webex(None, THREAD, EMAIL)):
            assert body_bytes(body) <= MAX_BODY_BYTES, (name, body_bytes(body))
            assert len(body["markdown"].encode()) <= MAX_BODY_BYTES, name
            assert body.get("parentId") == THREAD
        body = message.to_webex(ROOM, THREAD)
        if message.card is None:
            assert "attachments" not in body, name
            continue
        assert body["attachments"] == [{"contentType": CARD_CONTENT_TYPE, "content": message.card}], name
        assert "attachments" in message.to_webex(None, "T" * 256, "e" * 240 + "@example.com"), (
            "room for long ids"
        )
        assert (message.card["type"], message.card["version"]) == ("AdaptiveCard", "1.3"), name
        for card in nested_cards(message.card):
            assert len(card.get("actions", [])) <= 5, name
        assert message.card["body"], name


def test_every_card_round_trips_through_our_models(all_messages: list[tuple[str, OutgoingMessage]]) -> None:
    for name, message in all_messages:
        if message.card is not None:
            assert AdaptiveCard.model_validate(message.card).to_dict() == message.card, name


def test_every_submit_parses_to_its_verb_and_thread(
    all_messages: list[tuple[str, OutgoingMessage]], kb: KnowledgeBase
) -> None:
    verbs: set[str] = set()
    for name, message in all_messages:
        for data in submits(message.card or {}):
            parsed = parse_submit(dict(data))
            assert parsed is not None, (name, data)
            assert parsed.verb == data["verb"], name
            assert getattr(parsed, "thread_id", None) == THREAD, name
            assert len(json.dumps(data)) < 200, "payloads stay small"
            if isinstance(parsed, FeedbackData | ShowData):
                assert parsed.article_id in kb.articles, name
            verbs.add(parsed.verb)
    assert verbs == {"feedback", "show", "setup_page", "escalate"}


# --- What the answers say ------------------------------------------------------------------------


def test_fix_card_shows_code_name_message_steps_links_and_feedback(
    kb: KnowledgeBase, index: TriageIndex
) -> None:
    message = fix_card(triage("Error 1000:1002", index), kb, THREAD)
    article = kb.articles["1000:1002"]
    assert message.card is not None
    text = all_text(message)
    for expected in (article.title, "1000:1002", article.name, article.message, article.summary):
        assert expected and expected in text
    for n, step in enumerate(article.steps, 1):
        assert f"{n}. {step.text}" in texts(message.card)
    assert ADMIN_NOTE not in text  # 1000:1002 is fixable by the user
    actions = message.card["actions"]
    assert [a["type"] for a in actions] == [
        "Action.Submit",
        "Action.Submit",
        "Action.Submit",
        "Action.OpenUrl",
        "Action.OpenUrl",
    ]
    assert [parse_submit(a["data"]) for a in actions[:3]] == [
        FeedbackData(article_id="1000:1002", helpful=True, thread_id=THREAD),
        FeedbackData(article_id="1000:1002", helpful=False, thread_id=THREAD),
        EscalateData(article_id="1000:1002", thread_id=THREAD),
    ]
    assert actions[2]["title"] == "Contact the helpdesk"
    assert [a["url"] for a in actions[3:]] == [link.url for link in kb.resolve_links(article.links)]
    assert "Did this help?" in texts(message.card)


def test_fix_card_notes_admin_only_fixes(kb: KnowledgeBase) -> None:
    admin = fix_card(TriageResult("fix", (Match("1000:3", 1.0, "code"),), ("1000:3",)), kb, THREAD)
    assert kb.articles["1000:3"].admin_needed
    assert ADMIN_NOTE in texts(admin.card or {})
    assert ADMIN_NOTE in admin.markdown


def test_fix_card_lists_other_codes_with_show_buttons_and_respects_five_actions(
    kb: KnowledgeBase, index: TriageIndex
) -> None:
    result = triage("Error: 1000:602 then 1000:1004 and 1000:605 and 1000:1", index)
    assert result.codes[0] == "1000:602" and len(result.codes) == 4
    message = fix_card(result, kb, THREAD)
    assert message.card is not None
    actions = message.card["actions"]
    # Yes, No, Contact the helpdesk, two links: the five allowed. 1000:602 has three links, so one becomes
    # text, and the other codes are listed in the body (sent alone, each gets its own card).
    assert [a["type"] for a in actions] == ["Action.Submit"] * 3 + ["Action.OpenUrl"] * 2
    third_link = kb.resolve_links(kb.articles["1000:602"].links)[2]
    assert any(f"[{third_link.title}]({third_link.url})" in t for t in texts(message.card))
    for other in ("1000:1004", "1000:605", "1000:1"):
        assert any(other in t and kb.articles[other].title in t for t in texts(message.card)), other
        assert other in message.markdown


def test_fix_card_names_codes_that_share_the_message(kb: KnowledgeBase, index: TriageIndex) -> None:
    result = triage("Sign into your account to use your phone services", index)
    assert result.outcome == "fix" and result.matches[0].related
    message = fix_card(result, kb, THREAD)
    line = next(t for t in texts(message.card or {}) if t.startswith("Webex shows the same message for"))
    for related in result.matches[0].related:
        assert related in line


def test_clarify_card_offers_top_candidates_and_a_way_out(kb: KnowledgeBase) -> None:
    ids = ("blank-screen", "cant-sign-in", "sso-failed", "1000:1")
    message = clarify_card(TriageResult("clarify", tuple(Match(i, 0.6, "text") for i in ids)), kb, THREAD)
    assert message.card is not None
    actions = message.card["actions"]
    shown = [parse_submit(a["data"]) for a in actions if a["type"] == "Action.Submit"]
    assert shown[:3] == [ShowData(article_id=i, thread_id=THREAD) for i in ids[:3]]
    assert shown[3] == EscalateData(thread_id=THREAD)
    assert actions[-1]["title"].startswith("None of these")
    assert "Which of these is it?" in texts(message.card)


def test_not_sure_card_is_honest_and_points_to_the_helpdesk(kb: KnowledgeBase, index: TriageIndex) -> None:
    text = "my thing shows 1000:9999"
    result = triage(text, index)
    assert result.outcome == "none" and result.unknown_codes == ("1000:9999",)
    message = build(result, kb, THREAD, text)
    body = all_text(message)
    assert "I'm not sure" in body
    assert "1000:9999 is not in the Webex error catalogue" in body
    assert "Error: 1000:1002" in body
    assert kb.links["helpdesk-portal"].url in body
    assert message.card is not None
    actions = message.card["actions"]
    assert parse_submit(actions[0]["data"]) == EscalateData(thread_id=THREAD)
    assert [a["url"] for a in actions[1:]] == [kb.links["helpdesk-portal"].url]


def test_help_card_shows_admin_commands_only_to_admins(kb: KnowledgeBase) -> None:
    employee = help_card(kb, False, thread_id=THREAD)
    admin = help_card(kb, True, thread_id=THREAD, admin_commands=[("stats", "how the bot is doing")])
    assert "okta setup" not in all_text(employee)
    assert "**okta setup**" in all_text(admin)
    assert "**stats**: how the bot is doing" in all_text(admin)
    assert "Error: 1000:1002" in all_text(employee) and "help" in all_text(employee)
    assert not submits(employee.card or {})
    assert [parse_submit(d) for d in submits(admin.card or {})] == [SetupPageData(page=0, thread_id=THREAD)]
    assert kb.links["control-hub"].url in [a.get("url") for a in (admin.card or {})["actions"]]


def test_setup_guide_pages_cover_every_step_once_with_warnings_and_navigation(kb: KnowledgeBase) -> None:
    guide = kb.setup_guide
    assert guide is not None
    pages = -(-len(guide.steps) // 4)
    seen: list[str] = []
    for page in range(pages):
        message = setup_guide_card(kb, page, THREAD)
        assert message.card is not None
        card_texts = texts(message.card)
        seen += [t for t in card_texts if re.match(r"^\d+\. \*\*", t)]
        nav = {
            d["page"]: a["title"]
            for a in message.card["actions"]
            if a["type"] == "Action.Submit" and (d := a["data"])["verb"] == "setup_page"
        }
        assert ((page - 1) in nav) == (page > 0)
        assert ((page + 1) in nav) == (page < pages - 1)
        assert kb.links["control-hub"].url in [a.get("url") for a in message.card["actions"]]
    assert seen == [f"{n}. **{s.title}**: {s.text}" for n, s in enumerate(guide.steps, 1)]
    warnings = [s.warning for s in guide.steps if s.warning]
    assert warnings
    joined = "\n".join(all_text(setup_guide_card(kb, p, THREAD)) for p in range(pages))
    for warning in warnings:
        assert warning in joined


def test_setup_guide_clamps_forged_pages(kb: KnowledgeBase) -> None:
    assert setup_guide_card(kb, -5, THREAD) == setup_guide_card(kb, 0, THREAD)
    assert setup_guide_card(kb, 9999, THREAD) == setup_guide_card(kb, 3, THREAD)
    with pytest.raises(ValueError, match="page_size"):
        setup_guide_card(kb, 0, THREAD, page_size=0)


def test_builders_degrade_honestly_when_knowledge_is_missing(kb: KnowledgeBase) -> None:
    ghost = fix_card(TriageResult("fix", (Match("no-such-article", 1.0, "text"),)), kb, THREAD)
    assert "I'm not sure" in ghost.markdown
    assert "I'm not sure" in clarify_card(TriageResult("clarify", ()), kb, THREAD).markdown
    no_guide = KnowledgeBase(
        articles={k: a for k, a in kb.articles.items() if a.kind != "setup-guide"}, links=kb.links
    )
    missing = setup_guide_card(no_guide, 0, THREAD)
    assert missing.card is None and "not loaded" in missing.markdown


def test_text_only_replies(kb: KnowledgeBase) -> None:
    thanks, sorry = feedback_ack(True, kb), feedback_ack(False, kb)
    assert thanks.card is None and sorry.card is None
    assert "Thanks" in thanks.markdown and "helpdesk.example.com" not in thanks.markdown
    assert "Sorry" in sorry.markdown and kb.links["helpdesk-portal"].url in sorry.markdown
    no = refusal("I only help people at example.com.")
    assert (no.markdown, no.card) == ("I only help people at example.com.", None)
    assert body_bytes(refusal("x" * 20_000).to_webex(ROOM)) <= MAX_BODY_BYTES


# --- Size limits ---------------------------------------------------------------------------------

LONG_TEXTS = {
    "ascii": "Open the settings page and carefully do the very long thing described here " * 27,
    "non-ascii": "登录失败，请检查设置。Ünïcödé ✓ " * 100,
}


@pytest.mark.parametrize("flavour", sorted(LONG_TEXTS))
def test_forty_very_long_steps_are_truncated_to_fit(
    flavour: str, kb: KnowledgeBase, validator: jsonschema.Draft6Validator
) -> None:
    long = LONG_TEXTS[flavour]
    assert len(long) >= 2000
    article = Article(
        id="huge-article",
        kind="symptom",
        title="A very long title " * 30,
        category="general",
        admin_needed=True,
        summary=long,
        steps=tuple(Step(text=f"Step {i}: {long}") for i in range(40)),
        links=("webex-help", "helpdesk-portal", "webex-status"),
    )
    big = KnowledgeBase(articles={**kb.articles, article.id: article}, links=kb.links)
    result = TriageResult("fix", (Match(article.id, 1.0, "text"),), codes=("1000:1", "1000:2", "1000:3"))
    for message in (fix_card(result, big, THREAD), article_card(article, big, THREAD)):
        body = message.to_webex(ROOM, THREAD)
        assert body_bytes(body) <= MAX_BODY_BYTES
        assert message.card is not None, "truncation keeps the card"
        assert not schema_errors(validator, message.card)
        shown = [t for t in texts(message.card) if re.match(r"^\d+\. Step \d+:", t)]
        more = next(t for t in texts(message.card) if "more steps, see the link" in t)
        hidden = int(re.search(r"…and (\d+) more steps", more).group(1))  # type: ignore[union-attr]
        assert 1 <= len(shown) < 40 and len(shown) + hidden == 40
        assert shown[0].startswith("1. Step 0:") and all(len(t) < len(long) for t in shown)
        assert f"…and {hidden} more steps, see the link." in message.markdown
        assert "Step 39:" not in message.markdown


def test_to_webex_addresses_exactly_one_target_and_survives_absurd_ids(kb: KnowledgeBase) -> None:
    message = article_card(kb.articles["1000:1002"], kb, THREAD)
    with pytest.raises(ValueError, match="exactly one"):
        message.to_webex()
    with pytest.raises(ValueError, match="exactly one"):
        message.to_webex(ROOM, None, EMAIL)
    assert message.to_webex(None, None, EMAIL)["toPersonEmail"] == EMAIL
    assert "parentId" not in message.to_webex(ROOM)
    huge = message.to_webex("R" * 5000, THREAD)
    assert body_bytes(huge) <= MAX_BODY_BYTES
    assert "attachments" not in huge and huge["markdown"].startswith("**")


# --- Submit payloads -----------------------------------------------------------------------------


def test_parse_submit_accepts_each_verb_and_stringified_values() -> None:
    assert parse_submit(
        {"verb": "feedback", "article_id": "1000:1", "helpful": "false", "thread_id": "t"}
    ) == (FeedbackData(article_id="1000:1", helpful=False, thread_id="t"))
    assert parse_submit({"verb": "setup_page", "page": "2", "thread_id": "t"}) == SetupPageData(
        page=2, thread_id="t"
    )
    # Webex merges card inputs into the submit: keys we do not know are dropped, not fatal.
    assert parse_submit({"verb": "show", "article_id": "blank-screen", "thread_id": "t", "note": "x"}) == (
        ShowData(article_id="blank-screen", thread_id="t")
    )


GOOD = {"verb": "feedback", "article_id": "1000:1002", "helpful": True, "thread_id": THREAD}
BAD_INPUTS: list[Any] = [
    {**GOOD, "verb": "claim"},
    {**GOOD, "verb": "delete_everything"},
    {**GOOD, "verb": ["feedback"]},
    {k: v for k, v in GOOD.items() if k != "verb"},
    {k: v for k, v in GOOD.items() if k != "thread_id"},
    {k: v for k, v in GOOD.items() if k != "helpful"},
    {k: v for k, v in GOOD.items() if k != "article_id"},
    {**GOOD, "helpful": "maybe"},
    {**GOOD, "helpful": 1},
    {**GOOD, "helpful": None},
    {**GOOD, "article_id": 1002},
    {**GOOD, "article_id": "x" * 100_000},
    {**GOOD, "article_id": "<@all>"},
    {**GOOD, "article_id": "../../etc/passwd"},
    {**GOOD, "thread_id": ""},
    {**GOOD, "thread_id": "t" * 100_000},
    {**GOOD, "thread_id": "<@all>"},
    {**GOOD, "thread_id": {"$gt": ""}},
    {"verb": "show", "article_id": "blank-screen"},
    {"verb": "setup_page", "page": -1, "thread_id": "t"},
    {"verb": "setup_page", "page": True, "thread_id": "t"},
    {"verb": "setup_page", "page": 1.5, "thread_id": "t"},
    {"verb": "setup_page", "page": "9" * 50, "thread_id": "t"},
    {"verb": "setup_page", "page": "two", "thread_id": "t"},
    {**GOOD, **{f"k{i}": i for i in range(100)}},
    [GOOD],
    None,
    "feedback",
    {},
]


@pytest.mark.parametrize("inputs", BAD_INPUTS)
def test_parse_submit_rejects_forged_and_malformed_inputs(inputs: Any) -> None:
    assert parse_submit(GOOD) is not None  # the baseline the bad inputs are made from is fine
    assert parse_submit(inputs) is None


# --- Escaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize("injection", INJECTIONS)
def test_user_text_cannot_inject_into_cards_or_markdown(injection: str, kb: KnowledgeBase) -> None:
    text = f"zorblax {injection} frobnicate"
    nothing = TriageResult("none", (), unknown_codes=(injection,))
    for message in (build(nothing, kb, THREAD, text), not_sure_card(text, kb, THREAD, (injection,))):
        dumped = json.dumps(message.to_webex(ROOM, THREAD), ensure_ascii=False)
        for token in RAW_TOKENS:
            assert token not in dumped, token
        assert re.search("@all", dumped, re.IGNORECASE) is None
        # Still shown, just inert.
        assert "zorblax" in message.markdown and "zorblax" in "".join(texts(message.card or {}))


def test_escape_user_text_examples() -> None:
    assert escape_user_text("blank screen when I sign in", 100) == "blank screen when I sign in"
    assert escape_user_text("[click](http://evil)", 100) == "(click)(http(:)//evil)"
    assert escape_user_text("@\u200ball hi", 100) == "@\u00a0all hi"
    assert escape_user_text("# one\n\n# two", 100) == "\u00a0# one # two"
    assert escape_user_text("see evil.example.com, mailto:x@evil.io", 100) == (
        "see evil(.)example(.)com, mailto(:)x@evil(.)io"
    )
    assert escape_user_text("~~gone~~ | a | b | &lt;", 100) == "˜˜gone˜˜ ¦ a ¦ b ¦ & lt;"
    assert escape_user_text("Error:1000:8, e.g. 1.2.3", 100) == "Error:1000:8, e.g. 1.2.3"
    assert escape_user_text("a b c d e f g h", 6) == "a b c…"
    assert escape_user_text("anything", 0) == ""


# What markdown or a card would act on; "(", ")", "&" and "#" stay, being inert where they are left.
FORBIDDEN_CHARS = set("<>[]*_`\\~|")


@given(
    st.text(
        alphabet=st.sampled_from(list("<>[]()@aAlL:/!*_`#&\\ \n\u200b\u202e")) | st.characters(), max_size=400
    ),
    st.integers(min_value=0, max_value=300),
)
def test_escape_user_text_is_inert_and_bounded(text: str, max_len: int) -> None:
    out = escape_user_text(text, max_len)
    assert len(out) <= max_len
    assert not FORBIDDEN_CHARS & set(out)
    assert re.search("@all", out, re.IGNORECASE) is None
    assert "://" not in out and "javascript:" not in out.casefold() and "mailto:" not in out.casefold()
    assert re.search(r"&(#|[a-z]+;)", out, re.IGNORECASE) is None, "an entity"
    assert "\n" not in out and "\u200b" not in out


# Words and sentences; a dot only at a word's end (between two labels it would make a domain, defanged).
@given(st.from_regex(r"[A-Za-z0-9,?!']{1,12}\.?( [A-Za-z0-9,?!']{1,12}\.?){0,10}", fullmatch=True))
def test_escape_user_text_leaves_plain_text_alone(text: str) -> None:
    assert escape_user_text(text, len(text)) == text


# --- The card models hold the schema's rules -----------------------------------------------------


def test_models_serialize_to_schema_valid_camel_case_json(validator: jsonschema.Draft6Validator) -> None:
    card = AdaptiveCard(
        schema_url="http://adaptivecards.io/schemas/adaptive-card.json",
        body=(
            TextBlock(text="Hi", is_subtle=True, max_lines=2, horizontal_alignment="center", color="accent"),
            FactSet(facts=(Fact(title="Code", value="1000:1"),)),
            Container(style="emphasis", items=(InputText(id="details", is_multiline=True, max_length=500),)),
        ),
        actions=(
            ActionSubmit(title="Send", data={"verb": "x"}, style="positive"),
            ActionOpenUrl(title="Open", url="https://admin.webex.com"),
            ActionShowCard(title="More", card=AdaptiveCard(body=(InputText(id="more", label="More"),))),
        ),
    )
    data = card.to_dict()
    assert not schema_errors(validator, data)
    assert data["$schema"].startswith("http") and data["body"][0]["isSubtle"] is True
    assert data["body"][0]["maxLines"] == 2 and data["body"][2]["items"][0]["isMultiline"] is True
    assert "color" not in data["body"][1] and "id" not in data["body"][0], "None is dropped"
    assert AdaptiveCard.model_validate(data) == card


def test_models_refuse_more_than_five_actions_anywhere() -> None:
    six = tuple(ActionOpenUrl(title=str(i), url="https://example.com") for i in range(6))
    with pytest.raises(ValueError, match="at most 5"):
        AdaptiveCard(actions=six)
    with pytest.raises(ValueError, match="at most 5"):
        ActionShowCard.model_validate({"title": "x", "card": {"actions": [a.to_dict() for a in six]}})
    assert len(AdaptiveCard(actions=six[:5]).actions) == 5


def test_models_refuse_bad_input_ids() -> None:
    for bad in ("", " ", "two words"):
        with pytest.raises(ValidationError):
            InputText(id=bad)
    with pytest.raises(ValueError, match="duplicate input id"):
        AdaptiveCard(body=(InputText(id="a"), Container(items=(InputText(id="a"),))))


@pytest.mark.parametrize(
    "element",
    [
        {"type": "TextBlock", "text": "x", "size": "huge"},
        {"type": "TextBlock", "text": "x", "weight": "bold"},
        {"type": "TextBlock", "text": "x", "color": "red"},
        {"type": "TextBlock", "text": "x", "spacing": "tiny"},
        {"type": "TextBlock", "text": "x", "colour": "accent"},
        {"type": "TextBlock"},
        {"type": "Container", "items": [], "style": "danger"},
        {"type": "Container"},
        {"type": "FactSet", "facts": [{"title": "only a title"}]},
        {"type": "Input.Text"},
        {"type": "Input.Text", "id": "x", "style": "password"},
        {"type": "Marquee", "text": "x"},
    ],
)
def test_models_and_official_schema_agree_on_bad_elements(
    element: dict[str, Any], validator: jsonschema.Draft6Validator
) -> None:
    card = {"type": "AdaptiveCard", "version": "1.3", "body": [element]}
    official = schema_errors(validator, card)
    with pytest.raises(ValidationError):
        AdaptiveCard.model_validate(card)
    # Input.Text without an id is allowed by the schema's anyOf but lost on submit; we are stricter there.
    if element != {"type": "Input.Text"}:
        assert official, "the official schema rejects it too"


@pytest.mark.parametrize(
    "action",
    [
        {"type": "Action.Submit", "title": "x", "style": "primary"},
        {"type": "Action.OpenUrl", "title": "x"},
        {"type": "Action.OpenUrl", "title": "x", "url": "https://x", "target": "_blank"},
        {"type": "Action.Execute", "title": "x"},
    ],
)
def test_models_and_official_schema_agree_on_bad_actions(
    action: dict[str, Any], validator: jsonschema.Draft6Validator
) -> None:
    card = {"type": "AdaptiveCard", "version": "1.3", "actions": [action]}
    assert schema_errors(validator, card)
    with pytest.raises(ValidationError):
        AdaptiveCard.model_validate(card)


# --- Ticket cards ----------------------------------------------------------------------------------


def a_ticket(**changes: Any) -> Ticket:
    """A real store record, filled with the hostile text the cards must escape and fit."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": 1,
        "number": "HD-1042",
        "status": "open",
        "requester_id": "person-1",
        "requester_email": EMAIL,
        "requester_name": "Alex <@all> Doe",
        "room_id": "room-1",
        "thread_id": THREAD,
        "original_text": "Error 1000:1002 [click](http://evil) " * 40,
        "codes": ["1000:1002", "1000:603"],
        "articles": ["1000:1002", "blank-screen"],
        "steps_suggested": ["Quit Webex " * 30] * 8,
        "note": "tried restarting <script>alert(1)</script>",
        "transcript": [{"who": "Alex", "text": "blank <@all> " * 30, "at": "x"}] * 20,
        "assignee_id": "person-2",
        "assignee_name": "Sam",
        "resolution": "Cleared the cache **shout** " * 50,
        "helpdesk_message_id": None,
        "info_requests": 0,
        "reopened": 0,
        "created_at": now,
        "claimed_at": None,
        "resolved_at": None,
        "updated_at": now,
        "reply_parent": THREAD,
    }
    return Ticket(**(values | changes))


def ticket_messages(kb: KnowledgeBase) -> list[tuple[str, OutgoingMessage]]:
    t = a_ticket()
    return [
        ("escalation", cards.escalation_card(THREAD, "1000:1002", THREAD)),
        ("ticket", cards.ticket_card(t, kb)),
        (
            "ticket minimal",
            cards.ticket_card(a_ticket(codes=[], articles=[], note=None, transcript=[]), kb),
        ),
        ("filed", cards.ticket_filed_card(t, THREAD, True)),
        ("filed no room", cards.ticket_filed_card(t, THREAD, False)),
        ("info", cards.info_request_card(t, "Sam <@all>", "What does it say? " * 60, THREAD)),
        ("resolved", cards.ticket_resolved_card(t, "Sam", THREAD)),
        ("list", cards.ticket_list([t] * 30, "Open tickets")),
        ("summary", cards.ticket_summary(t)),
    ]


def test_ticket_cards_are_valid_small_and_escaped(
    kb: KnowledgeBase, validator: jsonschema.Draft6Validator
) -> None:
    for name, message in ticket_messages(kb):
        body = message.to_webex(room_id=ROOM, parent_id=THREAD)
        assert body_bytes(body) <= MAX_BODY_BYTES, name
        rendered = json.dumps(body)
        for token in RAW_TOKENS:
            assert token not in rendered, (name, token)
        if message.card is not None:
            assert schema_errors(validator, message.card) == [], name
            for card in nested_cards(message.card):
                assert len(card.get("actions", [])) <= 5, name


def test_ticket_card_actions_carry_the_ticket(kb: KnowledgeBase) -> None:
    card = cards.ticket_card(a_ticket(), kb).card or {}
    titles = [a["title"] for a in card["actions"]]
    assert titles == ["Claim", "Resolve", "Ask for info"]
    # What a client submits: the data merged with the inputs of the card it sits in.
    claim, resolve, ask = submits(card)
    assert parse_submit(claim) == cards.ClaimData(number="HD-1042")
    assert parse_submit(resolve | {"resolution": "cleared cache"}) == cards.ResolveData(
        number="HD-1042", resolution="cleared cache"
    )
    assert parse_submit(ask | {"question": "which laptop?"}) == cards.AskInfoData(
        number="HD-1042", question="which laptop?"
    )
    assert parse_submit(ask | {"question": ""}) is None  # an empty question is not sent
    assert parse_submit(claim | {"number": "HD-1042; DROP TABLE"}) is None


def test_escalation_and_requester_cards_round_trip() -> None:
    escalation = cards.escalation_card(THREAD, "1000:1002", "origin-1")
    (data,) = submits(escalation.card or {})
    assert "note" not in data  # the note comes from the input, not from the button
    assert parse_submit(data | {"note": "restarted twice"}) == cards.FileTicketData(
        thread_id=THREAD, article_id="1000:1002", origin_id="origin-1", note="restarted twice"
    )
    assert parse_submit(data | {"note": "x" * 5000}) is None
    resolved = submits(cards.ticket_resolved_card(a_ticket(), "Sam", THREAD).card or {})
    assert [parse_submit(d) for d in resolved] == [
        cards.TicketFixedData(number="HD-1042", thread_id=THREAD, fixed=True),
        cards.TicketFixedData(number="HD-1042", thread_id=THREAD, fixed=False),
    ]
    (answer,) = submits(cards.info_request_card(a_ticket(), "Sam", "which laptop?", THREAD).card or {})
    assert parse_submit(answer | {"answer": "the Mac"}) == cards.AnswerInfoData(
        number="HD-1042", thread_id=THREAD, answer="the Mac"
    )
    assert parse_submit(answer) is None, "the button alone is no answer"


PAYLOADS = {p.model_fields["verb"].default: p for p in get_args(get_args(SubmitData)[0])}


def test_inputs_are_the_fields_their_submit_takes_from_inputs_and_blank_ones_are_asked_for(
    kb: KnowledgeBase,
) -> None:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for name, message in ticket_messages(kb):
        for card in nested_cards(message.card or {}):
            inputs = {n["id"]: n for n in walk(card.get("body", [])) if n.get("type") == "Input.Text"}
            for action in card.get("actions", []):
                if action["type"] != "Action.Submit":
                    continue
                data, fields = action["data"], PAYLOADS[action["data"]["verb"]].input_fields()
                assert inputs.keys() == fields.keys(), name
                assert not data.keys() & fields.keys(), "inputs fill these, not the button"
                filled = data | {f: "x" for f in fields}
                assert parse_submit(filled) is not None, name
                for field, element in inputs.items():
                    blank_refused = parse_submit(filled | {field: ""}) is None
                    assert element.get("isRequired", False) == blank_refused, (name, field)
                    assert bool(element.get("errorMessage")) == blank_refused, (name, field)
                    limit = element["maxLength"]
                    assert parse_submit(filled | {field: "x" * limit}) is not None, (name, field)
                    assert parse_submit(filled | {field: "x" * (limit + 1)}) is None, (name, field)
                    seen[data["verb"], field] = element
    assert sorted(seen) == [
        ("answer_info", "answer"),
        ("ask_info", "question"),
        ("file_ticket", "note"),
        ("resolve", "resolution"),
    ]
    assert sorted(f for (_, f), e in seen.items() if e.get("isRequired")) == ["answer", "question"]


def test_forms_refuse_inputs_that_do_not_match_their_payload() -> None:
    values = {"number": "HD-1", "thread_id": THREAD}
    answer = {"answer": Prompt("Your answer", error="Write your answer first.")}
    inputs, button = form(AnswerInfoData, values, answer, title="Send")
    assert [i.id for i in inputs] == ["answer"] and button.data == {"verb": "answer_info", **values}
    with pytest.raises(ValueError, match="takes"):
        form(AnswerInfoData, values, {"reply": answer["answer"]}, title="Send")  # not a payload field
    with pytest.raises(ValueError, match="takes"):
        form(AnswerInfoData, values, {}, title="Send")
    with pytest.raises(ValueError, match="error message"):
        form(AnswerInfoData, values, {"answer": Prompt("Your answer")}, title="Send")
    with pytest.raises(ValidationError):
        form(AnswerInfoData, values | {"answer": "-"}, answer, title="Send")  # the input fills it
    with pytest.raises(ValidationError):
        form(AnswerInfoData, {"number": "HD-1"}, answer, title="Send")  # thread_id is missing
    with pytest.raises(ValidationError):
        form(FileTicketData, {"thread_id": "<@all>"}, {"note": Prompt("Note")}, title="Send")
    with pytest.raises(ValueError, match="form"):
        Draft().submit("Ask", AskInfoData(number="HD-1", question="which laptop?"))


def test_help_lists_every_command_a_person_may_use(kb: KnowledgeBase) -> None:
    text = cards.help_card(kb, False).markdown
    for command in ("escalate", "my tickets", "ticket HD-1042", "help"):
        assert f"**{command}**" in text, command
    assert "okta setup" not in text  # the administrators' commands are for administrators
    assert "okta setup" in cards.help_card(kb, True).markdown


def test_an_article_that_points_to_another_has_a_button_to_it(kb: KnowledgeBase) -> None:
    card = cards.article_card(kb.articles["cant-sign-in"], kb, THREAD).card or {}
    shown = [a["data"]["article_id"] for a in card["actions"] if a.get("data", {}).get("verb") == "show"]
    assert shown == ["blank-screen", "sso-failed"]
