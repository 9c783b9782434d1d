"""The bot's own words in the reader's language: catalogs complete and sound, built into the wheel, and
each audience answered in its language end to end."""

from __future__ import annotations

import ast
import asyncio
import gettext
import json
import os
import shutil
import string
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from babel.messages.catalog import Catalog
from babel.messages.pofile import read_po

from bot import cards
from bot.cards.draft import BUTTON_CHARS
from bot.i18n import LOCALE_DIR, _, compile_po, current_language, using_language
from bot.knowledge import KnowledgeBase
from bot.triage import LANGS, TriageIndex, triage
from tests.conftest import ROOT
from tests.fakewebex import FakeWebex
from tests.harness import Bot, card_of, db_url, make_settings, verb, wait_for
from tests.test_cards import SCHEMA_PATH, nested_cards, schema_errors, texts
from tests.test_tickets_e2e import click, posted_in

TRANSLATED = tuple(lang for lang in LANGS if lang != "en")
GERMAN_ERROR = "Ich bekomme Fehler 1000:1002, wenn ich die Telefondienste öffne. Was kann ich tun?"
FRENCH_ERROR = "J'ai l'erreur 1000:1002 quand j'ouvre les services téléphoniques, que dois-je faire ?"
BUTTONS = (
    "Contact the helpdesk",
    "Yes, it helped",
    "No, still stuck",
    "None of these: contact the helpdesk",
    "Helpdesk",
    "Okta setup guide",
    "Previous steps",
    "Next steps",
    "Send to the helpdesk",
    "Claim",
    "Resolve",
    "Ask for info",
    "Send question",
    "Cancel ticket",
    "Send answer",
    "Yes, fixed",
    "No, still broken",
)
# The calls whose string arguments are msgids (the keywords `pybabel extract` looks for).
GETTEXT_CALLS = {"_": (0,), "N_": (0,), "ngettext": (0, 1), "pgettext": (1,)}


def load(path: Path, lang: str | None = None) -> Catalog:
    with path.open("rb") as file:
        return read_po(file, locale=lang)


def forms(value: object) -> tuple[str, ...]:
    """A message's id or string as a tuple: one entry, or one per plural form."""
    if isinstance(value, str):
        return (value,)
    assert isinstance(value, tuple | list), value
    return tuple(str(v) for v in value)


def key(message: Any) -> tuple[str | None, str]:
    return (message.context, forms(message.id)[0])


def fields(text: str) -> set[str]:
    """The {placeholders} of a format string; raises on broken braces."""
    return {parsed[1] for parsed in string.Formatter().parse(text) if parsed[1] is not None}


def template() -> Catalog:
    return load(LOCALE_DIR / "messages.pot")


def source_msgids() -> set[tuple[str | None, str]]:
    """Every msgid the bot's code passes to gettext, found by walking its syntax trees (f-strings included,
    which `pybabel extract` does not look into: a call there would silently stay English)."""
    found: set[tuple[str | None, str]] = set()
    for path in sorted((ROOT / "bot").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            positions = GETTEXT_CALLS.get(node.func.id)
            if positions is None:
                continue
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            msgid = args[positions[0]] if len(args) > positions[0] else None
            if not isinstance(msgid, str):
                continue  # _(CONSTANT): the constant's N_() is the msgid
            context = args[0] if node.func.id == "pgettext" else None
            found.add((context if isinstance(context, str) else None, msgid))
    return found


# --- The catalogs --------------------------------------------------------------------------------------


def test_the_template_holds_exactly_the_msgids_of_the_code() -> None:
    """`pybabel extract` was run after the last text changed (README, "Languages")."""
    in_template = {key(m) for m in template() if m.id}
    in_code = source_msgids()
    assert in_code - in_template == set(), "texts missing from messages.pot: run pybabel extract"
    assert in_template - in_code == set(), "messages.pot holds texts the code no longer has"
    assert len(in_template) > 100


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_msgid_is_translated_and_keeps_its_placeholders(lang: str) -> None:
    catalog = load(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po", lang)
    wanted = {key(m): m for m in template() if m.id}
    have = {key(m): m for m in catalog if m.id}
    assert have.keys() == wanted.keys(), f"{lang}: run pybabel update"
    assert catalog.obsolete == {}
    problems = []
    for k, message in have.items():
        ids, strings = forms(message.id), forms(message.string)
        expected = set().union(*(fields(i) for i in ids))
        if message.fuzzy:
            problems.append(f"{k}: fuzzy")
        if message.pluralizable and len(strings) != catalog.num_plurals:
            problems.append(f"{k}: {len(strings)} plural forms, the language has {catalog.num_plurals}")
        for text in strings:
            if not text or not text.strip():
                problems.append(f"{k}: not translated")
            elif fields(text) != expected:
                problems.append(f"{k}: placeholders {sorted(fields(text))}, the msgid has {sorted(expected)}")
    assert problems == []


@pytest.mark.parametrize("lang", TRANSLATED)
def test_button_texts_fit_on_their_buttons(lang: str) -> None:
    """Webex clients cut longer button titles; the cards would cut them too (with an ellipsis)."""
    translations = compile_po(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po", lang)
    too_long = {b: t for b in BUTTONS if len(t := translations.gettext(b)) > BUTTON_CHARS}
    assert too_long == {}


@pytest.mark.parametrize("lang", TRANSLATED)
def test_translations_name_the_products_as_the_msgids_do(lang: str) -> None:
    catalog = load(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po", lang)
    for message in (m for m in catalog if m.id):
        ids, strings = " ".join(forms(message.id)), " ".join(forms(message.string))
        for product in ("Webex", "Okta", "Control Hub", "SAML"):
            assert ids.count(product) <= strings.count(product), f"{lang}: {message.id!r} lost {product}"


def test_german_is_formal() -> None:
    catalog = load(LOCALE_DIR / "de" / "LC_MESSAGES" / "messages.po", "de")
    informal = {"du", "dich", "dir", "dein", "deine", "deinem", "deinen", "deiner", "euch", "euer"}
    for message in (m for m in catalog if m.id):
        words = {w.strip(".,:;!?()„“") for s in forms(message.string) for w in s.split()}
        assert not words & informal, f"informal German in {message.id!r}: {sorted(words & informal)}"


def test_the_po_compiles_in_memory_from_a_tree_without_mo_files(tmp_path: Path) -> None:
    """A source checkout or an editable install has only the .po: the bot compiles it, and writes nothing."""
    shutil.copytree(ROOT / "bot" / "locale", tmp_path / "bot" / "locale")
    shutil.copy(ROOT / "bot" / "__init__.py", tmp_path / "bot" / "__init__.py")
    shutil.copy(ROOT / "bot" / "i18n.py", tmp_path / "bot" / "i18n.py")
    assert not list(tmp_path.rglob("*.mo"))
    files_before = sorted(tmp_path.rglob("*"))
    script = (
        "import bot.i18n as i18n\n"
        f"assert i18n.LOCALE_DIR.parent.parent.as_posix() == {tmp_path.resolve().as_posix()!r}, i18n.LOCALE_DIR\n"
        "with i18n.using_language('de'):\n"
        "    print(i18n._('Did this help?'))\n"
        "    print(i18n.ngettext('…and {count} more step', '…and {count} more steps', 3).format(count=3))\n"
        "with i18n.using_language('fr'):\n"
        "    print(i18n.pgettext('ticket status', 'claimed'))\n"
        "print(i18n._('Did this help?'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "Hat das geholfen?",
        "…und 3 weitere Schritte",
        "pris en charge",
        "Did this help?",
    ]
    assert sorted(tmp_path.rglob("*")) == files_before


def test_compile_po_skips_fuzzy_entries_as_pybabel_compile_does(tmp_path: Path) -> None:
    po = tmp_path / "messages.po"
    po.write_text(
        'msgid ""\nmsgstr ""\n"Content-Type: text/plain; charset=utf-8\\n"\n\n'
        'msgid "Did this help?"\nmsgstr "Hat das geholfen?"\n\n'
        '#, fuzzy\nmsgid "Next steps"\nmsgstr "Falsch geraten"\n',
        encoding="utf-8",
    )
    translations = compile_po(po, "de")
    assert translations.gettext("Did this help?") == "Hat das geholfen?"
    assert translations.gettext("Next steps") == "Next steps"


def test_the_wheel_carries_the_compiled_catalogs(tmp_path: Path) -> None:
    """`pip wheel` runs setup.py's build step: a .mo per language, the same catalog as its .po."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.mo")
    shutil.copytree(ROOT / "bot", source / "bot", ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    out = tmp_path / "wheel"
    run = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for lang in TRANSLATED:
            mo = f"bot/locale/{lang}/LC_MESSAGES/messages.mo"
            assert mo in names, f"{mo} is not in the wheel"
            with archive.open(mo) as file:
                built = gettext.GNUTranslations(file)
            from_po = compile_po(LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po", lang)
            for message in (m for m in template() if m.id and not m.pluralizable and not m.context):
                (msgid,) = forms(message.id)
                assert built.gettext(msgid) == from_po.gettext(msgid)
        with archive.open("bot/locale/de/LC_MESSAGES/messages.mo") as file:
            assert gettext.GNUTranslations(file).gettext("Did this help?") == "Hat das geholfen?"


async def test_each_task_keeps_its_own_language() -> None:
    """Events run concurrently: one's language never leaks into another's words."""

    async def speak(lang: str) -> list[str]:
        words = []
        with using_language(lang):
            for _step in range(5):
                await asyncio.sleep(0)
                words.append(_("Next steps"))
        return words

    german, french, english = await asyncio.gather(speak("de"), speak("fr"), speak("en"))
    assert set(german) == {"Nächste Schritte"}
    assert set(french) == {"Étapes suivantes"}
    assert set(english) == {"Next steps"}
    assert current_language() == "en"


# --- The builders ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft6Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return jsonschema.Draft6Validator(schema)


def test_an_article_without_a_translation_says_it_is_shown_in_english(kb: KnowledgeBase) -> None:
    """1000:1002 loses its German translation here and keeps its French one: only the German card owns up."""
    article = kb.articles["1000:1002"]
    untranslated = article.model_copy(
        update={"translations": {k: v for k, v in article.translations.items() if k != "de"}}
    )
    kb = kb.model_copy(update={"articles": {**kb.articles, "1000:1002": untranslated}})
    for lang, note, translated in (
        ("de", "Dieser Artikel ist noch nicht übersetzt", False),
        ("fr", "Cet article n'est pas encore traduit", True),
    ):
        view = kb.in_language(lang)
        assert (view.articles["1000:1002"].lang == lang) is translated
        with using_language(lang):
            message = cards.article_card(view.articles["1000:1002"], view, "thread")
        assert (note in message.markdown) is not translated
    message = cards.article_card(kb.articles["1000:1002"], kb, "thread")
    assert "not translated" not in message.markdown


@pytest.mark.parametrize("lang", TRANSLATED)
def test_every_card_in_every_language_validates_and_fits(
    lang: str, kb: KnowledgeBase, validator: jsonschema.Draft6Validator
) -> None:
    view = kb.in_language(lang)
    index = TriageIndex.build(kb, lang=lang)
    with using_language(lang):
        built = [cards.article_card(a, view, "thread") for a in view.articles.values()]
        built += [
            cards.build(triage(text, index), view, "thread", text) for text in ("1000:1002 1000:1003", "zzz")
        ]
        built += [cards.help_card(view, True, thread_id="thread", admin_commands=[("stats", "x")])]
        built += [cards.setup_guide_card(view, page, "thread") for page in range(4)]
        built += [cards.escalation_card("thread", None, None)]
    for message in built:
        assert message.card is not None
        for card in nested_cards(message.card):
            assert schema_errors(validator, card) == []
        assert message.size() <= cards.MAX_BODY_BYTES


# --- End to end -----------------------------------------------------------------------------------------


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    sam = fake_webex.add_person("sam@example.com", "Sam Agent")
    helpdesk = fake_webex.add_room("group", "Helpdesk")
    fake_webex.add_membership(helpdesk["id"], sam["id"])
    return {
        "klaus": fake_webex.add_person("klaus@example.com", "Klaus Berger"),
        "claire": fake_webex.add_person("claire@example.com", "Claire Martin"),
        "sam": sam,
        "sales": fake_webex.add_room("group", "Sales floor"),
        "helpdesk": helpdesk,
    }


async def test_a_german_message_gets_a_german_card_that_validates(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(world["sales"]["id"], world["klaus"], GERMAN_ERROR)
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the fix card")
    reply = fake_webex.posted_messages[0]
    card = card_of(reply)
    words = texts(card)
    buttons = [a["title"] for a in card["actions"]]
    assert "Was Sie versuchen können" in words and "Hat das geholfen?" in words
    assert buttons[:3] == ["Ja, das hat geholfen", "Nein, geht immer noch nicht", "Helpdesk kontaktieren"]
    # The article in German too (knowledge/i18n/de.toml), so no "not translated yet" note.
    assert "Falscher Benutzername oder falsches Passwort für die Telefondienste" in words
    assert "noch nicht übersetzt" not in json.dumps(reply)
    assert reply["markdown"].endswith("Hat das geholfen? Antworten Sie mit den Schaltflächen auf der Karte.")
    assert "Did this help" not in json.dumps(reply) and "What to try" not in json.dumps(reply)
    assert schema_errors(validator, card) == []


async def test_a_french_card_click_is_answered_in_french(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    claire, sales = world["claire"], world["sales"]["id"]
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        msg = fake_webex.add_message(sales, claire, FRENCH_ERROR)
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the fix card")
        fix = fake_webex.posted_messages[0]
        assert "Cela vous a-t-il aidé\u00a0?" in texts(card_of(fix))
        # The click carries no language: the bot remembers the one Claire wrote in.
        await click(bot, fake_webex, fix, claire, verb(fix, "feedback", helpful=True))
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the thanks")
        assert fake_webex.posted_messages[1]["markdown"].startswith("Merci de votre retour.")
        await click(bot, fake_webex, fix, claire, verb(fix, "escalate"))
        await wait_for(lambda: len(fake_webex.posted_messages) == 3, what="the note card")
    note_card = fake_webex.posted_messages[2]
    card = card_of(note_card)
    assert note_card["parentId"] == msg["id"]
    assert "Transmettre au service d'assistance\u00a0?" in texts(card)
    assert [a["title"] for a in card["actions"]] == ["Envoyer au service d'assistance"]
    assert next(e for e in card["body"] if e["type"] == "Input.Text")["placeholder"] == (
        "Qu'avez-vous déjà essayé\u00a0? (facultatif)"
    )
    assert schema_errors(validator, card) == []


@pytest.mark.parametrize(
    ("helpdesk_language", "claim_button", "claimed"),
    [("en", "Claim", "Sam Agent claimed"), ("it", "Prendi in carico", "Sam Agent ha preso in carico")],
)
async def test_the_helpdesk_reads_its_own_language_and_the_requester_theirs(
    fake_webex: FakeWebex,
    world: dict[str, Any],
    tmp_path: Path,
    helpdesk_language: str,
    claim_button: str,
    claimed: str,
) -> None:
    klaus, sales, helpdesk = world["klaus"], world["sales"]["id"], world["helpdesk"]["id"]
    settings = make_settings(
        fake_webex, db_url(tmp_path), helpdesk_room_id=helpdesk, helpdesk_language=helpdesk_language
    )
    async with Bot(fake_webex, settings) as bot:
        msg = fake_webex.add_message(sales, klaus, GERMAN_ERROR)
        await bot.post(fake_webex.message_created_envelope(msg))
        await wait_for(lambda: len(fake_webex.posted_messages) == 1, what="the fix card")
        fix = fake_webex.posted_messages[0]
        await click(bot, fake_webex, fix, klaus, verb(fix, "escalate"))
        await wait_for(lambda: len(fake_webex.posted_messages) == 2, what="the note card")
        note_card = fake_webex.posted_messages[1]
        await click(bot, fake_webex, note_card, klaus, verb(note_card, "file_ticket") | {"note": "Neustart"})
        await wait_for(lambda: len(posted_in(fake_webex, helpdesk)) == 1, what="the ticket card")
        ticket_post = posted_in(fake_webex, helpdesk)[0]
        number = verb(ticket_post, "claim")["number"]
        await wait_for(
            lambda: any(number in m["markdown"] for m in posted_in(fake_webex, sales)),
            what="the confirmation",
        )
        await click(bot, fake_webex, ticket_post, world["sam"], verb(ticket_post, "claim"))
        await wait_for(lambda: len(posted_in(fake_webex, helpdesk)) == 2, what="the claim under the card")
        await wait_for(lambda: len(posted_in(fake_webex, sales)) == 4, what="the notice to the requester")
    ticket_card = card_of(ticket_post)
    assert ticket_card["actions"][0]["title"] == claim_button
    if helpdesk_language == "en":
        assert "Their message" in texts(ticket_card) and "Bot suggested" in ticket_post["markdown"]
        assert "Nachricht" not in json.dumps(ticket_post) and "Übernehmen" not in json.dumps(ticket_post)
    assert GERMAN_ERROR.split(",")[0] in ticket_post["markdown"]  # the requester's words stay theirs
    assert posted_in(fake_webex, helpdesk)[1]["markdown"] == f"{claimed} {number}."
    filed, notice = posted_in(fake_webex, sales)[2:]
    assert texts(card_of(filed))[0] == f"Ticket {number} wurde eröffnet"
    assert notice["markdown"] == f"Sam vom Helpdesk kümmert sich darum ({number})."
