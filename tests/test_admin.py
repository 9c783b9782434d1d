"""Admins in chat: stats, unmatched questions, knowledge reload, and the setup guide in pages."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.keys import CONTEXT
from tests.conftest import KNOWLEDGE_DIR, ROOT
from tests.fakewebex import FakeWebex
from tests.harness import Bot, card_of, db_url, make_settings, submits, wait_for


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    admin = fake_webex.add_person("ada@example.com", "Ada Admin")
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    return {
        "admin": admin,
        "alice": alice,
        "admin_room": fake_webex.add_room("direct", "Ada"),
        "alice_room": fake_webex.add_room("direct", "Alice"),
    }


async def say(
    bot: Bot, fake: FakeWebex, room: dict[str, Any], person: dict[str, Any], text: str
) -> dict[str, Any]:
    before = len(fake.posted_messages)
    msg = fake.add_message(room["id"], person, text)
    assert (await bot.post(fake.message_created_envelope(msg))).status == 200
    await wait_for(lambda: len(fake.posted_messages) > before, what=f"a reply to {text!r}")
    await bot.idle()
    return fake.posted_messages[-1]


async def test_stats_unmatched_and_refusal(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), admin_emails="ada@example.com")
    async with Bot(fake_webex, settings) as bot:
        for text in ("Error: 1000:1002", "Error: 1000:1002 again", "blank screen", "the printer is jammed"):
            await say(bot, fake_webex, world["alice_room"], world["alice"], text)
        await say(
            bot,
            fake_webex,
            world["alice_room"],
            world["alice"],
            "my vpn password is Hunter2!x and vpn is down",
        )
        refused = await say(bot, fake_webex, world["alice_room"], world["alice"], "stats")
        assert "for the bot's admins" in refused["markdown"]
        stats = await say(bot, fake_webex, world["admin_room"], world["admin"], "stats 30d")
        card = json.dumps(card_of(stats), ensure_ascii=False)
        assert "last 30 days" in stats["markdown"]
        assert "Messages triaged:** 5" in stats["markdown"]
        assert "Answered confidently:** 3 (60%)" in stats["markdown"]
        assert "1000:1002 ×2" in card
        gaps = await say(bot, fake_webex, world["admin_room"], world["admin"], "unmatched")
        assert "printer is jammed" in gaps["markdown"]
        assert "Hunter2" not in gaps["markdown"] and "redacted" in gaps["markdown"]
        assert "blank screen" not in gaps["markdown"]  # that one was answered


async def test_reload_keeps_old_knowledge_on_error_and_reports_changes(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    folder = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, folder)
    settings = make_settings(
        fake_webex, db_url(tmp_path), admin_emails="ada@example.com", knowledge_dir=folder
    )
    async with Bot(fake_webex, settings) as bot:
        errors = folder / "errors.toml"
        good = errors.read_text()
        errors.write_text(good.replace('category = "sso"', 'category = "telepathy"', 1))
        failed = await say(bot, fake_webex, world["admin_room"], world["admin"], "reload knowledge")
        assert "not reloaded" in failed["markdown"] and "errors.toml" in failed["markdown"]
        assert "category" in failed["markdown"]
        assert bot.app[CONTEXT].knowledge.kb.articles["1000:1"].category != "telepathy"
        errors.write_text(good.replace("Unknown Error: 1000:1 |", "Unknown Error: 1000:1 |", 1))
        setup = folder / "setup.toml"
        setup.write_text(setup.read_text().replace('detail = "', 'detail = "First: ', 1))
        done = await say(bot, fake_webex, world["admin_room"], world["admin"], "reload knowledge")
        assert "Knowledge reloaded" in done["markdown"] and "okta-saml-setup" in done["markdown"]
        assert bot.app[CONTEXT].knowledge.kb.articles["okta-saml-setup"].steps[0].text.startswith("First: ")
        # Triage uses the new knowledge at once.
        answer = await say(bot, fake_webex, world["alice_room"], world["alice"], "okta setup")
        assert "First: " in answer["markdown"]


async def test_setup_guide_pages_by_text_and_buttons(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        room, alice = world["alice_room"], world["alice"]
        early = await say(bot, fake_webex, room, alice, "next")
        assert "okta setup" in early["markdown"]
        first = await say(bot, fake_webex, room, alice, "okta setup")
        assert "Steps 1–4" in first["markdown"]
        second = await say(bot, fake_webex, room, alice, "next")
        assert "Steps 5–8" in second["markdown"]
        back = await say(bot, fake_webex, room, alice, "previous")
        assert "Steps 1–4" in back["markdown"]
        seventh = await say(bot, fake_webex, room, alice, "setup step 7")
        assert "Steps 5–8" in seventh["markdown"]
        assert "admin.webex.com" in json.dumps(card_of(seventh))
        next_button = next(
            d for d in submits(card_of(seventh)) if d.get("verb") == "setup_page" and d["page"] == 2
        )
        card_msg = next(
            m
            for m in reversed(list(fake_webex.messages.values()))
            if m.get("markdown") == seventh["markdown"]
        )
        action = fake_webex.add_attachment_action(card_msg["id"], alice, next_button)
        await bot.post(fake_webex.action_created_envelope(action))
        await wait_for(lambda: "Steps 9–12" in fake_webex.posted_messages[-1]["markdown"], what="page 3")
        attributes = await say(bot, fake_webex, room, alice, "saml attributes")
        assert "user.email" in attributes["markdown"]
        backup = await say(bot, fake_webex, room, alice, "is there a backup url if saml breaks")
        assert "support" in backup["markdown"].lower()


async def test_stats_cli(fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path))
    async with Bot(fake_webex, settings) as bot:
        await say(bot, fake_webex, world["alice_room"], world["alice"], "Error: 1000:603")
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bot", "stats", "7d"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": db_url(tmp_path), "KNOWLEDGE_DIR": str(KNOWLEDGE_DIR)},
    )
    assert out.returncode == 0, out.stderr
    assert "Messages triaged        1" in out.stdout
    assert "1000:603 ×1" in out.stdout
