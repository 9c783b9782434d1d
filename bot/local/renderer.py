"""The official Adaptive Cards renderer for the playground: fetched once with npm into a cache, then served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# Pinned majors. adaptivecards 3 ships a UMD bundle (dist/adaptivecards.min.js, with its carousel dependency
# bundled) that defines the global `AdaptiveCards` in a plain <script> tag; it renders TextBlock markdown
# through the global `markdownit` when one is loaded, which markdown-it's dist bundle defines.
PACKAGES: tuple[str, ...] = ("adaptivecards@3", "markdown-it@14")
# What /vendor/{name} serves, relative to node_modules; nothing else in the cache is reachable.
VENDOR_FILES: dict[str, str] = {
    "adaptivecards.min.js": "adaptivecards/dist/adaptivecards.min.js",
    "adaptivecards.css": "adaptivecards/dist/adaptivecards.css",
    "markdown-it.min.js": "markdown-it/dist/markdown-it.min.js",
}
INSTALL_TIMEOUT_SECONDS = 300.0
OUTPUT_TAIL_CHARS = 600
OUTPUT_LINE_LIMIT = 1 << 20  # npm's longest lines (a dependency tree in an error) fit
PROGRESS_LOG_SECONDS = 5.0  # a slow fetch says it is still at work this often

Status = Literal["fetching", "ready", "missing-npm", "failed"]


def default_cache_dir(xdg_cache_home: str | os.PathLike[str] | None = None) -> Path:
    """$XDG_CACHE_HOME/helpdesk-bot, or ~/.cache/helpdesk-bot (the XDG spec ignores a relative value)."""
    base = Path(xdg_cache_home) if xdg_cache_home else None
    if base is None or not base.is_absolute():
        base = Path.home() / ".cache"
    return base / "helpdesk-bot"


def _package_name(spec: str) -> str:
    # "markdown-it@14" -> "markdown-it"; "@scope/pkg@1" -> "@scope/pkg"
    name, _, _ = spec[1:].partition("@")
    return spec[0] + name


def _major(spec: str) -> str | None:
    version = spec[1:].partition("@")[2]
    return version.split(".")[0].lstrip("^~=v") or None


class Renderer:
    """Owns one npm cache folder: knows whether the renderer is there, fetches it if not, and says which."""

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        npm: str = "npm",
        packages: Sequence[str] = PACKAGES,
        timeout: float = INSTALL_TIMEOUT_SECONDS,
    ) -> None:
        # cache_dir may be left to the app, which fills in the configured default at startup.
        self.cache_dir = cache_dir
        self.npm = npm
        self.packages = tuple(packages)
        self.timeout = timeout
        self.status: Status = "fetching"
        self.detail = "not started yet"
        self.versions: dict[str, dict[str, str]] = {}
        self.progress = Progress()
        self._task: asyncio.Task[None] | None = None

    @property
    def npm_dir(self) -> Path:
        if self.cache_dir is None:
            raise RuntimeError("the renderer cache folder is not configured")
        return self.cache_dir / "npm"

    def install_args(self, prefix: Path) -> list[str]:
        """npm's arguments (after the npm command itself) to install the pinned packages under `prefix`."""
        return ["install", "--prefix", str(prefix), *self.packages]

    def shell_command(self) -> str:
        """What a person runs by hand when the automatic fetch cannot."""
        return shlex.join(["npm", *self.install_args(self.npm_dir)])

    def vendor_path(self, name: str) -> Path | None:
        relative = VENDOR_FILES.get(name)
        if relative is None or self.status != "ready":
            return None
        return self.npm_dir / "node_modules" / relative

    # -- what is on disk ----------------------------------------------------------------------------

    def _installed(self, npm_dir: Path) -> dict[str, dict[str, str]] | None:
        """Versions and licences of the pinned packages under npm_dir, or None if anything is missing or stale."""
        modules = npm_dir / "node_modules"
        if not all((modules / relative).is_file() for relative in VENDOR_FILES.values()):
            return None
        found: dict[str, dict[str, str]] = {}
        for spec in self.packages:
            name = _package_name(spec)
            try:
                meta: Any = json.loads((modules / name / "package.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if not isinstance(meta, dict):
                return None
            version, major = str(meta.get("version", "")), _major(spec)
            if major is not None and version.split(".")[0] != major:
                return None  # the pin moved on since this cache was filled
            found[name] = {"version": version, "license": str(meta.get("license", "unknown"))}
        return found

    def refresh(self) -> bool:
        """Look at the cache again (someone may have run the npm command by hand); True when ready."""
        installed = self._installed(self.npm_dir)
        if installed is None:
            return False
        self.versions = installed
        self.status = "ready"
        self.detail = (
            ", ".join(f"{name} {v['version']} ({v['license']} licence)" for name, v in installed.items())
            + f" from {self.npm_dir}"
        )
        return True

    def describe(self) -> dict[str, Any]:
        # Look again: someone may have run the npm command by hand, or emptied the cache.
        if self.status != "fetching" and not self.refresh() and self.status == "ready":
            self._fail(
                "failed", f"the renderer files in {self.npm_dir} are gone; restart the bot to fetch them"
            )
        return {
            "status": self.status,
            "detail": self.detail,
            "command": self.shell_command(),
            "packages": self.versions,
            "progress": self.progress.as_json(),
        }

    # -- fetching -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Use the cache if it is filled; otherwise fetch in the background (startup does not wait)."""
        if self.refresh():
            log.info("Adaptive Cards renderer ready: %s", self.detail)
            return
        self._task = asyncio.create_task(self._fetch(), name="renderer-fetch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def wait(self) -> Status:
        """Until the fetch (if any) is over; for tests and tools."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.status

    async def _fetch(self) -> None:
        npm = shutil.which(self.npm)
        if npm is None:
            self._fail(
                "missing-npm",
                f"npm was not found ({self.npm!r} is not on the PATH), so the card renderer cannot be fetched. "
                f"Install Node.js with npm, then run: {self.shell_command()} and reload this page.",
            )
            return
        self.status, self.detail = (
            "fetching",
            f"npm is installing {' '.join(self.packages)} into {self.npm_dir}",
        )
        log.info(
            "first start: fetching the Adaptive Cards renderer with npm into %s "
            "(the playground shows cards as text until it is done)",
            self.npm_dir,
        )
        now = time.monotonic()
        self.progress = Progress(started=now, logged=now)
        npm_dir = self.npm_dir
        npm_dir.parent.mkdir(parents=True, exist_ok=True)
        # Install beside the cache and move it in whole: a half-finished or concurrent install never
        # looks like a ready cache.
        staging = Path(tempfile.mkdtemp(prefix="npm-staging-", dir=npm_dir.parent))
        try:
            # --loglevel=http: one line per request, which is what the progress counts.
            argv = [npm, *self.install_args(staging), "--no-audit", "--no-fund", "--loglevel=http"]
            code, output = await self._run(argv)
            if code != 0:
                self._fail("failed", f"npm install failed (exit {code}): {output}")
                return
            if self._installed(staging) is None:
                self._fail("failed", f"npm install finished but the renderer files are missing: {output}")
                return
            await asyncio.to_thread(self._move_in, staging, npm_dir)
        finally:
            await asyncio.to_thread(shutil.rmtree, staging, True)
        if self.refresh():
            log.info("Adaptive Cards renderer ready in %s: %s", self.progress.elapsed_text(), self.detail)
        else:
            self._fail("failed", f"the renderer files did not arrive in {npm_dir}")

    async def _run(self, argv: list[str]) -> tuple[int, str]:
        """Run npm, following its output line by line for the progress; returns the exit code and the tail."""
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=OUTPUT_LINE_LIMIT,
            )
        except OSError as exc:
            return 127, str(exc)
        tail: list[str] = []
        try:
            async with asyncio.timeout(self.timeout):
                assert process.stdout is not None
                async for raw in process.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    # The http lines are progress, not news: the tail keeps what explains a failure.
                    if self.progress.count(line):
                        self._log_progress()
                    elif line:
                        tail.append(line)
                        del tail[:-20]
                await process.wait()
        except TimeoutError:
            return -1, f"no answer from npm after {self.timeout:.0f}s"
        finally:
            if process.returncode is None:  # timed out or cancelled by shutdown
                process.kill()
                await process.wait()
        text = "\n".join(tail).strip()
        return process.returncode or 0, text[-OUTPUT_TAIL_CHARS:]

    def _log_progress(self) -> None:
        # Said once when npm has resolved the packages and starts downloading, then every few seconds.
        now = time.monotonic()
        first_download = self.progress.downloaded == 1
        if first_download or now - self.progress.logged >= PROGRESS_LOG_SECONDS:
            self.progress.logged = now
            log.info("fetching the Adaptive Cards renderer: %s", self.progress.text())

    def _move_in(self, staging: Path, npm_dir: Path) -> None:
        if self._installed(npm_dir) is not None:
            return  # another process sharing the cache finished first: keep its copy
        if npm_dir.exists():  # stale (an older pin) or half-made by hand
            shutil.rmtree(npm_dir, ignore_errors=True)
        with contextlib.suppress(OSError):  # lost a race to another process after all
            staging.rename(npm_dir)

    def _fail(self, status: Status, detail: str) -> None:
        self.status, self.detail = status, detail
        # One line: the bot runs on (the playground shows cards as text), and the page says the same.
        detail_line = " ".join(detail.split())
        if status == "failed":
            detail_line += f"; run it by hand to see why: {self.shell_command()}"
        log.warning("Adaptive Cards renderer %s (cards show as text): %s", status, detail_line)


@dataclass
class Progress:
    """What npm has done so far, counted from its --loglevel=http lines."""

    started: float | None = None
    resolved: int = 0  # package documents fetched: how many packages there will be
    downloaded: int = 0  # tarballs fetched or taken from npm's cache
    last: str = ""  # the package npm is at
    logged: float = 0.0

    def count(self, line: str) -> bool:
        """Count one line of npm's output; False when it is not an http line."""
        match = _HTTP_LINE.match(line)
        if match is None:
            return False
        url = match.group("url")
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if url.endswith(".tgz"):
            self.downloaded += 1
            self.last = name.removesuffix(".tgz")
        else:
            self.resolved += 1
            self.last = name
        return True

    def elapsed_text(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s" if self.started is not None else "no time"

    def text(self) -> str:
        done = f"{self.resolved} package{'' if self.resolved == 1 else 's'} resolved"
        if self.downloaded:
            done += f", {min(self.downloaded, self.resolved)} of {self.resolved} downloaded"
        return f"{done} ({self.elapsed_text()})"

    def as_json(self) -> dict[str, Any]:
        seconds = time.monotonic() - self.started if self.started is not None else 0.0
        return {
            "resolved": self.resolved,
            "downloaded": self.downloaded,
            "last": self.last,
            "seconds": round(seconds, 1),
            "text": self.text() if self.started is not None else "",
        }


# "npm http fetch GET 200 https://registry.npmjs.org/markdown-it 18ms (cache updated)" and
# "npm http cache mdurl@https://registry.npmjs.org/mdurl/-/mdurl-2.1.0.tgz 0ms (cache hit)"
_HTTP_LINE = re.compile(r"^npm http (?:fetch \S+ \d+ |cache \S*?@)(?P<url>https?://\S+)")
