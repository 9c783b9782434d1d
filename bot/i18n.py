"""The bot's own words in the reader's language: the one place that loads the gettext catalogs in bot/locale."""

from __future__ import annotations

import functools
import gettext
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from io import BytesIO
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
SOURCE_LANGUAGE = "en"  # the msgids are the English texts

# Set per event by the handlers (using_language); builders read it through _() and friends. A task copies
# the context it starts in, so concurrent events never see each other's language.
_language: ContextVar[str] = ContextVar("language", default=SOURCE_LANGUAGE)


@contextmanager
def using_language(lang: str) -> Iterator[None]:
    """Everything built inside speaks `lang`."""
    token = _language.set(lang)
    try:
        yield
    finally:
        _language.reset(token)


def current_language() -> str:
    return _language.get()


def _(message: str) -> str:
    return translations(_language.get()).gettext(message)


def ngettext(singular: str, plural: str, n: int) -> str:
    return translations(_language.get()).ngettext(singular, plural, n)


def pgettext(context: str, message: str) -> str:
    return translations(_language.get()).pgettext(context, message)


def N_(message: str) -> str:
    """Marks a msgid for extraction where it is defined (a constant); _() translates it where it is used."""
    return message


@functools.cache
def translations(lang: str) -> gettext.NullTranslations:
    """The catalog of `lang`, loaded once: the .mo a built wheel carries, else its .po compiled in memory
    (a source checkout or an editable install has no .mo), else none: English."""
    if lang == SOURCE_LANGUAGE:
        return gettext.NullTranslations()
    folder = LOCALE_DIR / lang / "LC_MESSAGES"
    mo = folder / f"{DOMAIN}.mo"
    if mo.is_file():
        with mo.open("rb") as file:
            return gettext.GNUTranslations(file)
    po = folder / f"{DOMAIN}.po"
    if po.is_file():
        return compile_po(po, lang)
    return gettext.NullTranslations()


def compile_po(path: Path, lang: str) -> gettext.GNUTranslations:
    """What `pybabel compile` would write for this .po, without writing it (fuzzy entries left out, as there)."""
    with path.open("rb") as file:
        catalog = read_po(file, locale=lang, abort_invalid=True)
    compiled = BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)
