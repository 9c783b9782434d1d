"""The build step pyproject.toml cannot say: compile bot/locale's message catalogs into the wheel."""

from __future__ import annotations

from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from setuptools import setup
from setuptools.command.build_py import build_py

LOCALE = Path("bot") / "locale"


class BuildPyWithCatalogs(build_py):
    """build_py, plus a .mo next to each .po in the build (the .mo files are never committed)."""

    def run(self) -> None:
        super().run()
        for po in sorted(LOCALE.glob("*/LC_MESSAGES/*.po")):
            lang = po.parent.parent.name
            with po.open("rb") as file:
                catalog = read_po(file, locale=lang, abort_invalid=True)
            mo = Path(self.build_lib) / po.with_suffix(".mo")
            mo.parent.mkdir(parents=True, exist_ok=True)
            with mo.open("wb") as file:
                write_mo(file, catalog)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        compiled = [
            str(Path(self.build_lib) / po.with_suffix(".mo")) for po in LOCALE.glob("*/LC_MESSAGES/*.po")
        ]
        return [*super().get_outputs(include_bytecode), *compiled]


setup(cmdclass={"build_py": BuildPyWithCatalogs})
