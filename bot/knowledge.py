"""Load and validate the hand-edited knowledge files into a frozen KnowledgeBase."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

Category = Literal[
    "sso",
    "certificate",
    "service-discovery",
    "registration",
    "configuration",
    "network",
    "session",
    "general",
]
ArticleKind = Literal["error", "symptom", "setup-note", "setup-guide"]
ArticleId = Annotated[str, Field(pattern=r"^(1000:\d{1,4}|[a-z0-9]+(-[a-z0-9]+)*)$", max_length=64)]
NonEmpty = Annotated[str, Field(min_length=1, max_length=2000)]

ERRORS_FILE = "errors.toml"
ARTICLES_FILE = "articles.toml"
SETUP_FILE = "setup.toml"
LINKS_FILE = "links.toml"
SCOPE_FILE = "scope.toml"
WORDS_FILE = "words.toml"
TRANSLATIONS_DIR = "i18n"  # i18n/<lang>.toml: the articles in another language
KNOWLEDGE_FILES = (ERRORS_FILE, ARTICLES_FILE, SETUP_FILE, LINKS_FILE, SCOPE_FILE, WORDS_FILE)
# A word as triage sees it after normalisation: lower case letters and digits. A form is words with single spaces.
_WORD = r"[a-z0-9]+"
Word = Annotated[str, Field(pattern=rf"^{_WORD}$", max_length=64)]
WordForm = Annotated[str, Field(pattern=rf"^{_WORD}( {_WORD})*$", max_length=200)]
DRAFT_MARK = "TODO"  # what a draft article (`gaps --draft`) leaves for the admin to write


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt field name in a TOML file into an error instead of silent loss.
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


# --- What the files hold -------------------------------------------------------------------------


class ErrorEntryFile(_Strict):
    code: Annotated[str, Field(pattern=r"^1000:\d{1,4}$")]
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9]*$")]
    message: NonEmpty
    title: NonEmpty
    category: Category
    admin_needed: bool
    summary: NonEmpty
    steps: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]
    aliases: tuple[NonEmpty, ...] = ()
    phrases: tuple[NonEmpty, ...] = ()
    links: tuple[str, ...] = ()


class ArticleFile(_Strict):
    id: ArticleId
    kind: Literal["symptom", "setup-note"]
    title: NonEmpty
    category: Category
    admin_needed: bool
    summary: NonEmpty
    aliases: tuple[NonEmpty, ...] = ()
    phrases: tuple[NonEmpty, ...] = ()
    steps: Annotated[tuple[NonEmpty, ...], Field(min_length=1)]
    links: tuple[str, ...] = ()
    # Articles the steps point the reader to ("see the blank-screen steps"): the card gets a button to each.
    see_also: tuple[ArticleId, ...] = ()

    @field_validator("summary", "steps")
    @classmethod
    def _written(cls, value: str | tuple[str, ...], info: ValidationInfo) -> str | tuple[str, ...]:
        # A draft from `python -m bot gaps --draft` leaves these to the admin, marked TODO.
        if isinstance(value, str):
            if value.startswith(DRAFT_MARK):
                raise ValueError(
                    f"still a draft: the {info.field_name} says {DRAFT_MARK}; write the real one"
                )
            return value
        todo = [str(n) for n, text in enumerate(value, 1) if text.startswith(DRAFT_MARK)]
        if todo:
            which = f"step {todo[0]} says" if len(todo) == 1 else f"steps {', '.join(todo)} say"
            raise ValueError(f"still a draft: {which} {DRAFT_MARK}; write the real steps")
        return value


class SetupStepFile(_Strict):
    title: NonEmpty
    detail: NonEmpty
    warning: NonEmpty | None = None


class SetupGuideFile(_Strict):
    id: ArticleId
    title: NonEmpty
    audience: Literal["admin", "employee"] = "admin"
    summary: NonEmpty
    aliases: tuple[NonEmpty, ...] = ()
    phrases: tuple[NonEmpty, ...] = ()
    links: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    step: Annotated[tuple[SetupStepFile, ...], Field(min_length=1)]


class LinkFile(_Strict):
    id: ArticleId
    title: NonEmpty
    url: Annotated[str, Field(pattern=r"^(https?://|mailto:)\S+$", max_length=500)]


class ScopeFile(_Strict):
    # Phrases that name things this bot does not handle (other products, meeting audio...).
    out_of_scope: tuple[NonEmpty, ...] = ()
    # What "webex is broken" is offered: the broad articles a vague message most likely means.
    broad_choices: tuple[ArticleId, ...] = ()


class _Words(_Strict):
    webex_words: tuple[Word, ...] = ()
    stopwords: tuple[Word, ...] = ()
    synonyms: dict[WordForm, tuple[WordForm, ...]] = Field(default_factory=dict)

    @field_validator("synonyms")
    @classmethod
    def _one_meaning_per_form(cls, table: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        # A form listed under two words would silently mean whichever the table happened to list last.
        owner: dict[str, str] = {}
        for canonical, forms in table.items():
            for form in forms:
                if owner.setdefault(form, canonical) != canonical:
                    raise ValueError(f"{form!r} is listed under both {owner[form]!r} and {canonical!r}")
        return table


class LanguageWords(_Words):
    """A language's own lists ([lang.de] ...), used on top of the English ones for messages in it."""

    out_of_scope: tuple[WordForm, ...] = ()


class WordLists(_Words):
    """Triage's word lists (words.toml): the file's shape is also what the bot reads."""

    lang: dict[Annotated[str, Field(pattern=r"^[a-z]{2}$")], LanguageWords] = Field(default_factory=dict)


class StepTranslationFile(_Strict):
    title: NonEmpty
    detail: NonEmpty
    warning: NonEmpty | None = None


class ArticleTranslationFile(_Strict):
    id: ArticleId
    # The English text's fingerprint when this was translated: a different one now means the English changed.
    source: str | None = None
    title: NonEmpty
    summary: NonEmpty
    steps: tuple[NonEmpty, ...] = ()
    step: tuple[StepTranslationFile, ...] = ()  # the setup guide's steps
    message: NonEmpty | None = None
    phrases: tuple[NonEmpty, ...] = ()


class TranslationFile(_Strict):
    article: tuple[ArticleTranslationFile, ...] = ()
    links: dict[str, NonEmpty] = Field(default_factory=dict)
    # How a person says, in this language, the things scope.toml lists (other products, meeting audio...).
    out_of_scope: tuple[NonEmpty, ...] = ()


# --- What the rest of the bot sees ---------------------------------------------------------------


class Step(BaseModel):
    model_config = ConfigDict(frozen=True)
    text: str
    title: str | None = None
    warning: str | None = None


class Link(BaseModel):
    model_config = ConfigDict(frozen=True)
    id: str
    title: str
    url: str


class ArticleText(BaseModel):
    """An article's words in one language other than English."""

    model_config = ConfigDict(frozen=True)
    title: str
    summary: str
    # Empty when the translation's steps don't line up with the English ones: the card then shows English steps.
    steps: tuple[Step, ...] = ()
    message: str | None = None
    phrases: tuple[str, ...] = ()


class Article(BaseModel):
    """One answer the bot can give: an error code, a symptom, a setup note or the setup guide."""

    model_config = ConfigDict(frozen=True)
    id: str
    kind: ArticleKind
    title: str
    category: str
    admin_needed: bool
    summary: str
    steps: tuple[Step, ...]
    links: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    phrases: tuple[str, ...] = ()
    # Error entries only.
    code: str | None = None
    name: str | None = None
    message: str | None = None
    # The setup guide only: ids of the setup notes that belong to it.
    notes: tuple[str, ...] = ()
    see_also: tuple[str, ...] = ()  # articles the steps point to
    # By ISO 639-1 code; English is the article itself.
    translations: dict[str, ArticleText] = Field(default_factory=dict)
    lang: str = "en"  # the language this copy's words are in (in_language sets it)

    @field_validator("steps")
    @classmethod
    def _has_steps(cls, steps: tuple[Step, ...]) -> tuple[Step, ...]:
        if not steps:
            raise ValueError("an article needs at least one step")
        return steps

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    @property
    def source_fingerprint(self) -> str:
        """Of the English words a translation renders: what makes a translation stale when it changes."""
        english = self.model_dump_json(include={"title", "summary", "steps", "message"})
        return hashlib.sha256(english.encode()).hexdigest()[:12]

    def in_language(self, lang: str) -> tuple[Article, bool]:
        """This article's text in `lang`, and whether it is really in `lang` (False: English as a fallback)."""
        text = self.translations.get(lang)
        if text is None:
            return self, lang == "en"
        if not text.steps:
            return self, False  # title and summary alone over English steps would read worse than English
        update: dict[str, Any] = {
            "title": text.title,
            "summary": text.summary,
            "steps": text.steps,
            "lang": lang,
        }
        if text.message:
            update["message"] = text.message
        return self.model_copy(update=update), True


class KnowledgeBase(BaseModel):
    model_config = ConfigDict(frozen=True)
    articles: dict[str, Article]
    links: dict[str, Link]
    out_of_scope: tuple[str, ...] = ()
    broad_choices: tuple[str, ...] = ()
    words: WordLists = WordLists()
    # Per language: the link titles and the out-of-scope markers of i18n/<lang>.toml.
    link_titles: dict[str, dict[str, str]] = Field(default_factory=dict)
    out_of_scope_by_lang: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    languages: tuple[str, ...] = ("en",)
    # Problems that don't stop the bot (a missing or stale translation): `knowledge check` lists them.
    warnings: tuple[str, ...] = ()
    source: str = ""

    def article(self, article_id: str) -> Article | None:
        return self.articles.get(article_id)

    def in_language(self, lang: str) -> KnowledgeBase:
        """The same knowledge with each article's words in `lang` where translated (English where not)."""
        if lang == "en":
            return self
        titles = self.link_titles.get(lang, {})
        return self.model_copy(
            update={
                "articles": {i: a.in_language(lang)[0] for i, a in self.articles.items()},
                "links": {
                    i: link.model_copy(update={"title": titles.get(i, link.title)})
                    for i, link in self.links.items()
                },
            }
        )

    def resolve_links(self, link_ids: Iterable[str]) -> list[Link]:
        return [self.links[i] for i in link_ids if i in self.links]

    @property
    def errors(self) -> list[Article]:
        return [a for a in self.articles.values() if a.kind == "error"]

    @property
    def setup_guide(self) -> Article | None:
        return next((a for a in self.articles.values() if a.kind == "setup-guide"), None)


# --- Problems --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    entry: str
    field: str
    message: str

    def __str__(self) -> str:
        where = (
            self.file + (f": {self.entry}" if self.entry else "") + (f": {self.field}" if self.field else "")
        )
        return f"{where}: {self.message}"


class KnowledgeError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__(
            f"{len(problems)} problem(s) in the knowledge files:\n" + "\n".join(map(str, problems))
        )


def _problems_from(exc: ValidationError, file: str, entry: str) -> list[Problem]:
    out = []
    for err in exc.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        out.append(Problem(file, entry, field or "(entry)", err["msg"]))
    return out


def _entry_label(table: str, index: int, raw: Any, key: str = "id") -> str:
    ident = raw.get(key) if isinstance(raw, dict) else None
    return f"{table}[{index}]" + (f" ({ident})" if isinstance(ident, str) else "")


def _read_toml(path: Path, problems: list[Problem]) -> dict[str, Any] | None:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        problems.append(Problem(path.name, "", "", "file is missing"))
    except tomllib.TOMLDecodeError as exc:
        problems.append(Problem(path.name, "", "", f"not valid TOML: {exc}"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem(path.name, "", "", f"cannot read: {exc}"))
    return None


def _table_list(doc: dict[str, Any], key: str, file: str, problems: list[Problem]) -> list[Any]:
    items = doc.get(key, [])
    if not isinstance(items, list):
        problems.append(Problem(file, "", key, f"expected [[{key}]] tables"))
        return []
    return items


def _parse_errors(doc: dict[str, Any], problems: list[Problem]) -> list[Article]:
    out = []
    for i, raw in enumerate(_table_list(doc, "error", ERRORS_FILE, problems)):
        label = _entry_label("error", i, raw, key="code")
        try:
            e = ErrorEntryFile.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, ERRORS_FILE, label))
            continue
        out.append(
            Article(
                id=e.code,
                kind="error",
                title=e.title,
                category=e.category,
                admin_needed=e.admin_needed,
                summary=e.summary,
                steps=tuple(Step(text=s) for s in e.steps),
                links=e.links,
                aliases=e.aliases,
                phrases=e.phrases,
                code=e.code,
                name=e.name,
                message=e.message,
            )
        )
    return out


def _parse_articles(doc: dict[str, Any], problems: list[Problem]) -> list[Article]:
    out = []
    for i, raw in enumerate(_table_list(doc, "article", ARTICLES_FILE, problems)):
        label = _entry_label("article", i, raw)
        try:
            a = ArticleFile.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, ARTICLES_FILE, label))
            continue
        out.append(
            Article(
                id=a.id,
                kind=a.kind,
                title=a.title,
                category=a.category,
                admin_needed=a.admin_needed,
                summary=a.summary,
                steps=tuple(Step(text=s) for s in a.steps),
                links=a.links,
                aliases=a.aliases,
                phrases=a.phrases,
                see_also=a.see_also,
            )
        )
    return out


def _parse_setup(doc: dict[str, Any], problems: list[Problem]) -> list[Article]:
    try:
        g = SetupGuideFile.model_validate(doc)
    except ValidationError as exc:
        problems.extend(_problems_from(exc, SETUP_FILE, "guide"))
        return []
    steps = tuple(Step(text=s.detail, title=s.title, warning=s.warning) for s in g.step)
    return [
        Article(
            id=g.id,
            kind="setup-guide",
            title=g.title,
            category="sso",
            admin_needed=g.audience == "admin",
            summary=g.summary,
            steps=steps,
            links=g.links,
            aliases=g.aliases,
            phrases=g.phrases,
            notes=g.notes,
        )
    ]


def _parse_links(
    doc: dict[str, Any], overrides: Mapping[str, str], problems: list[Problem]
) -> dict[str, Link]:
    links: dict[str, Link] = {}
    for i, raw in enumerate(_table_list(doc, "link", LINKS_FILE, problems)):
        label = _entry_label("link", i, raw)
        try:
            lf = LinkFile.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, LINKS_FILE, label))
            continue
        if lf.id in links:
            problems.append(Problem(LINKS_FILE, label, "id", f"duplicate link id {lf.id!r}"))
        links[lf.id] = Link(id=lf.id, title=lf.title, url=overrides.get(lf.id) or lf.url)
    for link_id in overrides.keys() - links.keys():
        problems.append(
            Problem(LINKS_FILE, link_id, "url", "an override names a link id that links.toml lacks")
        )
    return links


def _cross_check(articles: list[Article], links: Mapping[str, Link], problems: list[Problem]) -> None:
    seen: dict[str, str] = {}
    for a in articles:
        file = {"error": ERRORS_FILE, "setup-guide": SETUP_FILE}.get(a.kind, ARTICLES_FILE)
        if a.id in seen:
            problems.append(Problem(file, a.id, "id", f"duplicate id (also in {seen[a.id]})"))
        seen.setdefault(a.id, file)
        for link_id in a.links:
            if link_id not in links:
                problems.append(Problem(file, a.id, "links", f"unknown link id {link_id!r}"))
    ids = {a.id for a in articles}
    for a in articles:
        for note in a.notes:
            if note not in ids:
                problems.append(Problem(SETUP_FILE, a.id, "notes", f"unknown article id {note!r}"))
        for ref in a.see_also:
            if ref not in ids:
                problems.append(Problem(ARTICLES_FILE, a.id, "see_also", f"unknown article id {ref!r}"))


def load_knowledge(directory: Path | str, link_overrides: Mapping[str, str] | None = None) -> KnowledgeBase:
    """Read every knowledge file in `directory`; raise KnowledgeError listing every problem found."""
    root = Path(directory)
    problems: list[Problem] = []
    if not root.is_dir():
        raise KnowledgeError([Problem(str(root), "", "", "knowledge directory does not exist")])
    docs = {name: _read_toml(root / name, problems) for name in KNOWLEDGE_FILES if name != SCOPE_FILE}
    scope_doc = _read_toml(root / SCOPE_FILE, []) if (root / SCOPE_FILE).exists() else {}

    links = _parse_links(docs[LINKS_FILE] or {}, link_overrides or {}, problems)
    setup_doc = docs[SETUP_FILE]
    articles = [
        *_parse_errors(docs[ERRORS_FILE] or {}, problems),
        # An unreadable setup.toml is already one problem; validating "nothing" would add noise.
        *(_parse_setup(setup_doc, problems) if setup_doc is not None else []),
        *_parse_articles(docs[ARTICLES_FILE] or {}, problems),
    ]
    _cross_check(articles, links, problems)
    scope = ScopeFile()
    try:
        scope = ScopeFile.model_validate(scope_doc or {})
    except ValidationError as exc:
        problems.extend(_problems_from(exc, SCOPE_FILE, ""))
    known = {a.id for a in articles}
    for choice in scope.broad_choices:
        if choice not in known:
            problems.append(Problem(SCOPE_FILE, "broad_choices", choice, "no such article"))
    word_lists = WordLists()
    try:
        word_lists = WordLists.model_validate(docs[WORDS_FILE] or {})
    except ValidationError as exc:
        problems.extend(_problems_from(exc, WORDS_FILE, ""))
    warnings: list[Problem] = []
    translated = _read_translations(root / TRANSLATIONS_DIR, articles, links, problems, warnings)
    if problems:
        raise KnowledgeError(problems)
    by_id = {a.id: a for a in articles}
    for lang, doc in translated.items():
        for entry in doc.article:
            article = by_id[entry.id]
            by_id[entry.id] = article.model_copy(
                update={
                    "translations": {
                        **article.translations,
                        lang: _article_text(article, entry, lang, warnings),
                    }
                }
            )
    return KnowledgeBase(
        articles=by_id,
        links=links,
        out_of_scope=scope.out_of_scope,
        broad_choices=scope.broad_choices,
        words=word_lists,
        link_titles={lang: dict(doc.links) for lang, doc in translated.items()},
        out_of_scope_by_lang={lang: doc.out_of_scope for lang, doc in translated.items()},
        languages=("en", *translated),
        warnings=tuple(map(str, warnings)),
        source=str(root),
    )


def _read_translations(
    folder: Path,
    articles: list[Article],
    links: Mapping[str, Link],
    problems: list[Problem],
    warnings: list[Problem],
) -> dict[str, TranslationFile]:
    """i18n/<lang>.toml for each language there is; broken files are problems, gaps only warnings."""
    out: dict[str, TranslationFile] = {}
    if not folder.is_dir():
        return out
    ids = {a.id for a in articles}
    for path in sorted(folder.glob("*.toml")):
        lang, file = path.stem, f"{TRANSLATIONS_DIR}/{path.name}"
        if not re.fullmatch(r"[a-z]{2}", lang) or lang == "en":
            problems.append(
                Problem(file, "", "", "a translation file is named by a two-letter language code, not en")
            )
            continue
        doc = _read_toml(path, problems)
        if doc is None:
            continue
        try:
            parsed = TranslationFile.model_validate(doc)
        except ValidationError as exc:
            problems.extend(_problems_from(exc, file, ""))
            continue
        seen: set[str] = set()
        for entry in parsed.article:
            if entry.id not in ids:
                problems.append(Problem(file, entry.id, "id", "no such article in the English knowledge"))
            elif entry.id in seen:
                problems.append(Problem(file, entry.id, "id", "translated twice"))
            seen.add(entry.id)
        for link_id in parsed.links.keys() - links.keys():
            problems.append(Problem(file, link_id, "links", "no such link id in links.toml"))
        for article in articles:
            if article.id not in seen:
                warnings.append(Problem(file, article.id, "", "not translated: the bot answers in English"))
        out[lang] = parsed
    return out


def _article_text(
    article: Article, entry: ArticleTranslationFile, lang: str, warnings: list[Problem]
) -> ArticleText:
    file = f"{TRANSLATIONS_DIR}/{lang}.toml"
    if entry.source is not None and entry.source != article.source_fingerprint:
        warnings.append(
            Problem(
                file,
                article.id,
                "source",
                f"stale: the English changed since (now {article.source_fingerprint})",
            )
        )
    if article.kind == "setup-guide":
        steps = tuple(Step(text=s.detail, title=s.title, warning=s.warning) for s in entry.step)
    else:
        steps = tuple(Step(text=s) for s in entry.steps)
    if len(steps) != len(article.steps):
        warnings.append(
            Problem(
                file,
                article.id,
                "steps",
                f"{len(steps)} steps for the English {len(article.steps)}: the card shows the English steps",
            )
        )
        steps = ()
    return ArticleText(
        title=entry.title, summary=entry.summary, steps=steps, message=entry.message, phrases=entry.phrases
    )


@dataclass(frozen=True, slots=True)
class KnowledgeDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_knowledge(old: KnowledgeBase, new: KnowledgeBase) -> KnowledgeDiff:
    """Which article ids a reload adds, removes and changes."""
    old_ids, new_ids = old.articles.keys(), new.articles.keys()
    changed = [i for i in old_ids & new_ids if old.articles[i].fingerprint != new.articles[i].fingerprint]
    return KnowledgeDiff(
        added=tuple(sorted(new_ids - old_ids)),
        removed=tuple(sorted(old_ids - new_ids)),
        changed=tuple(sorted(changed)),
    )
