"""The knowledge files: complete against the seed, and broken files fail with file, entry and field."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from bot.knowledge import KnowledgeBase, KnowledgeError, diff_knowledge, load_knowledge

from .conftest import KNOWLEDGE_DIR, SHARED

SEED = SHARED / "seed" / "webex-okta-saml-and-error-codes.txt"
CONTRACT_IDS = {
    "okta-saml-setup",
    "saml-attributes",
    "saml-backup-url",
    "sp-initiated-sso",
    "sso-failed",
    "cant-sign-in",
    "blank-screen",
    "confirmation-pin",
    "retrieve-credentials",
    "azure-ad-sso",
    "secure-meetings",
}


def seed_rows() -> list[tuple[str, str, str]]:
    """(code, name, message) for every row of the seed's error table."""
    assert SEED.exists(), f"the seed document is expected at {SEED}"
    rows = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^(\w+) = (\d+) \| (.*?) \|", line)
        if m:
            rows.append((f"1000:{m.group(2)}", m.group(1), m.group(3).strip()))
    return rows


def test_every_seed_code_is_in_the_catalogue_verbatim(kb: KnowledgeBase) -> None:
    rows = seed_rows()
    assert len(rows) == 36
    for code, name, message in rows:
        article = kb.articles[code]
        assert (article.name, article.message) == (name, message)
        assert len(article.steps) >= 3, f"{code} needs real fix steps"


def test_the_seed_fix_for_1000_1_is_kept(kb: KnowledgeBase) -> None:
    steps = " ".join(s.text for s in kb.articles["1000:1"].steps)
    assert "start a new session in the Phone Service settings" in steps


def test_contract_ids_exist(kb: KnowledgeBase) -> None:
    assert kb.articles.keys() >= CONTRACT_IDS


def test_setup_guide_has_every_seed_step_in_order(kb: KnowledgeBase) -> None:
    guide = kb.setup_guide
    assert guide is not None and guide.id == "okta-saml-setup"
    text = " ".join(f"{s.title} {s.text}" for s in guide.steps).lower()
    landmarks = [
        "admin.webex.com",
        "authentication",
        "metadata file",
        "entityid",
        "sign on",
        "advanced sign-on",
        "organization id",
        "metadata.xml",
        "certificate authority",
        "test sso connection",
        "pop-up",
        "enable single sign on",
    ]
    positions = [text.find(mark) for mark in landmarks]
    assert all(p >= 0 for p in positions), dict(zip(landmarks, positions, strict=True))
    assert positions == sorted(positions), "setup steps are out of order"
    assert set(guide.notes) >= {"saml-attributes", "saml-backup-url", "sp-initiated-sso"}


def test_links_resolve_and_can_be_overridden() -> None:
    kb = load_knowledge(KNOWLEDGE_DIR, {"helpdesk-portal": "https://it.example.org/help"})
    assert kb.links["helpdesk-portal"].url == "https://it.example.org/help"
    assert {"helpdesk-portal", "helpdesk-space", "admin-contact", "control-hub"} <= kb.links.keys()


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, target)
    return target


def test_broken_field_names_file_entry_and_field(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    errors = folder / "errors.toml"
    errors.write_text(errors.read_text().replace("admin_needed = false", 'admin_needed = "maybe"', 1))
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    problem = info.value.problems[0]
    assert problem.file == "errors.toml"
    assert problem.entry.startswith("error[") and "1000:" in problem.entry
    assert problem.field == "admin_needed"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "links.toml").write_text((folder / "links.toml").read_text() + '\n[[link]]\nid = "x"\n')
    (folder / "setup.toml").write_text("this is [not toml")
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    files = {p.file for p in info.value.problems}
    assert {"links.toml", "setup.toml"} <= files
    assert any(p.field == "title" for p in info.value.problems if p.file == "links.toml")


def test_unknown_link_and_misspelt_field_are_errors(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    articles = folder / "articles.toml"
    text = articles.read_text()
    text = text.replace('id = "blank-screen"', 'id = "blank-screen"\nsynonyms = ["x"]', 1)
    articles.write_text(text)
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    assert any(p.entry.endswith("(blank-screen)") and p.field == "synonyms" for p in info.value.problems)


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="does not exist"):
        load_knowledge(tmp_path / "nope")


def test_diff_reports_added_removed_changed(tmp_path: Path, kb: KnowledgeBase) -> None:
    folder = _copy(tmp_path)
    setup = folder / "setup.toml"
    setup.write_text(setup.read_text().replace('detail = "', 'detail = "First: ', 1))
    changed = load_knowledge(folder)
    diff = diff_knowledge(kb, changed)
    assert diff.changed == ("okta-saml-setup",) and not diff.added and not diff.removed
    assert diff_knowledge(kb, kb).empty


def test_word_lists_are_knowledge_checked_like_the_other_files(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    words = folder / "words.toml"
    text = words.read_text()
    # A form listed under two words, and a stop word that normalisation could never produce.
    text = text.replace('incorrect = ["wrong"]', 'incorrect = ["wrong", "cert"]')
    text = text.replace('"a", "an",', '"A-1", "an",')
    words.write_text(text)
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    found = {(p.file, p.field.split(".")[0]) for p in info.value.problems}
    assert ("words.toml", "synonyms") in found and ("words.toml", "stopwords") in found
    assert any("'cert' is listed under both" in p.message for p in info.value.problems)


def test_a_missing_word_list_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "words.toml").unlink()
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    assert [(p.file, p.message) for p in info.value.problems] == [("words.toml", "file is missing")]


def test_the_word_lists_reach_triage(kb: KnowledgeBase) -> None:
    from bot.triage import Lexicon

    lexicon = Lexicon.from_words(kb.words)
    assert "webex" in lexicon.webex_words and "the" in lexicon.stopwords
    assert lexicon.content_tokens("i cant log in".split()) == ["cannot", "signin"]


def test_translations_carry_an_articles_words_and_fall_back_honestly(kb: KnowledgeBase) -> None:
    assert {"fr", "es"} <= set(kb.languages)
    article, translated = kb.articles["blank-screen"].in_language("es")
    assert translated and article.lang == "es" and article.title != kb.articles["blank-screen"].title
    assert len(article.steps) == len(kb.articles["blank-screen"].steps)
    english, translated = kb.articles["blank-screen"].in_language("xx")
    assert not translated and english.lang == "en"
    view = kb.in_language("fr")
    assert view.articles["1000:1002"].lang == "fr" and kb.articles["1000:1002"].lang == "en"


def test_missing_stale_and_misaligned_translations_are_warnings_not_errors(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    fr = folder / "i18n" / "fr.toml"
    text = fr.read_text()
    # 1000:1 loses its entry, 1000:2's English "changes" (its fingerprint no longer matches), and
    # blank-screen's steps no longer line up with the English ones.
    start = text.index('[[article]]\nid = "1000:1"')
    text = text[:start] + text[text.index("[[article]]", start + 10) :]
    text = re.sub(r'(id = "1000:2"\nsource = )"[0-9a-f]+"', r'\1"000000000000"', text)
    text = re.sub(
        r'(id = "blank-screen"\nsource = "[0-9a-f]+"\n(?:.*\n)*?steps = \[)', r'\1"extra",', text, count=1
    )
    fr.write_text(text)
    kb = load_knowledge(folder)
    warnings = "\n".join(kb.warnings)
    assert "i18n/fr.toml: 1000:1: not translated" in warnings
    assert "i18n/fr.toml: 1000:2: source: stale" in warnings
    assert "i18n/fr.toml: blank-screen: steps:" in warnings
    assert not kb.articles["blank-screen"].in_language("fr")[1]  # English steps, said so


def test_a_broken_translation_file_is_an_error(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / "i18n" / "fr.toml").write_text(
        '[[article]]\nid = "no-such-article"\ntitle = "x"\nsummary = "y"\n'
    )
    (folder / "i18n" / "english.toml").write_text("")
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    found = {(p.file, p.entry) for p in info.value.problems}
    assert ("i18n/fr.toml", "no-such-article") in found and ("i18n/english.toml", "") in found


def test_broad_choices_must_name_articles(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    scope = folder / "scope.toml"
    scope.write_text(scope.read_text().replace('"blank-screen"]', '"no-such-article"]'))
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    assert [(p.file, p.field) for p in info.value.problems] == [("scope.toml", "no-such-article")]


def test_see_also_must_name_articles(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    articles = folder / "articles.toml"
    articles.write_text(articles.read_text().replace('see_also = ["blank-screen",', 'see_also = ["nowhere",'))
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(folder)
    assert [(p.entry, p.field) for p in info.value.problems] == [("cant-sign-in", "see_also")]
