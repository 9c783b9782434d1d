"""The command line as a person uses it: real subprocesses, real knowledge files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bot.store import Store

from .conftest import KNOWLEDGE_DIR, ROOT


def run(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_", "KNOWLEDGE_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**base, **(env or {})},
        timeout=60,
        check=False,
    )


def test_ask_prints_title_steps_and_links() -> None:
    out = run("ask", "Error: 1000:1002 when I open phone services")
    assert out.returncode == 0, out.stderr
    assert "1000:1002" in out.stdout and "ServiceDiscoveryAuthenticationFailure" in out.stdout
    assert "\n1. " in out.stdout and "https://" in out.stdout


def test_ask_json_contract() -> None:
    out = run("ask", "--json", "blnk screen at sign in")
    payload = json.loads(out.stdout)
    assert payload["confident"] is True
    assert payload["matches"][0]["id"] == "blank-screen"
    assert 0.0 <= payload["matches"][0]["score"] <= 1.0


def test_ask_json_stdin_one_object_per_line() -> None:
    lines = ["Error: 1000:603", "hello", "", "okta setup"]
    out = run("ask", "--json", "-", stdin="\n".join(lines) + "\n")
    objects = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(objects) == len(lines)
    assert objects[0]["matches"][0]["id"] == "1000:603" and objects[0]["confident"]
    assert objects[1]["confident"] is False


def test_ask_not_sure_offers_the_helpdesk() -> None:
    out = run("ask", "the printer is jammed")
    assert "not sure" in out.stdout and "helpdesk" in out.stdout.lower()


def test_knowledge_check_ok_and_broken(tmp_path: Path) -> None:
    ok = run("knowledge", "check")
    assert ok.returncode == 0 and "OK" in ok.stdout
    broken = tmp_path / "k"
    shutil.copytree(KNOWLEDGE_DIR, broken)
    (broken / "errors.toml").write_text(
        (broken / "errors.toml").read_text().replace('category = "sso"', 'category = "magic"', 1)
    )
    (broken / "links.toml").write_text("nonsense = [")
    bad = run("knowledge", "check", str(broken))
    assert bad.returncode == 1
    assert "errors.toml: error[" in bad.stderr and ": category:" in bad.stderr
    assert "links.toml" in bad.stderr and "not valid TOML" in bad.stderr


def test_knowledge_dir_from_environment(tmp_path: Path) -> None:
    out = run("knowledge", "check", env={"KNOWLEDGE_DIR": str(tmp_path / "missing")})
    assert out.returncode == 1 and "does not exist" in out.stderr


def test_bad_configuration_names_the_variable() -> None:
    out = run("ask", "hi", env={"PORT": "not-a-port"})
    assert out.returncode == 2
    assert "PORT" in out.stderr and "Traceback" not in out.stderr


def test_purge_deletes_old_handled_events_and_says_how_many(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bot.db'}"

    async def seed() -> None:
        month_ago = datetime.now(UTC) - timedelta(days=30)
        for clock, event_id, handled in (
            (month_ago, "old", True),
            (None, "recent", True),
            (month_ago, "stuck", False),
        ):
            store = await (Store.open(url, now=_fixed(clock)) if clock else Store.open(url))
            try:
                await store.enqueue_events([(event_id, "messages", "{}")])
                if handled:
                    [claimed] = await store.claim_events("w1")
                    await store.mark_done(claimed.event_id)
            finally:
                await store.close()

    async def left() -> dict[str, int]:
        store = await Store.open(url)
        try:
            return await store.inbox_counts()
        finally:
            await store.close()

    asyncio.run(seed())
    out = run("purge", "--days", "14", env={"DATABASE_URL": url})
    assert out.returncode == 0, out.stderr
    assert "deleted rows older than 14 days" in out.stdout
    assert [line.split() for line in out.stdout.splitlines() if "inbox" in line] == [["inbox", "1"]]
    counts = asyncio.run(left())
    assert (counts["done"], counts["pending"]) == (1, 1)  # the recent one, and the one never handled

    refused = run("purge", env={"DATABASE_URL": url, "RETENTION_DAYS": "0"})
    assert refused.returncode == 2 and "keeps everything" in refused.stderr


def _fixed(at: datetime) -> Callable[[], datetime]:
    """A clock stopped at one instant (a lambda default would not type-check under --strict)."""
    return lambda: at
