"""Admins end to end against the fake Webex: knowledge gaps and their drafts, the stats chart as an upload,
and dead ITSM deliveries on the CLI."""

from __future__ import annotations

import asyncio
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest

from bot.keys import CONTEXT
from bot.store import Store
from tests.conftest import KNOWLEDGE_DIR, ROOT
from tests.fakewebex import FakeWebex
from tests.harness import Bot, card_of, db_url, make_settings, verb, wait_for
from tests.test_admin import say
from tests.test_cards import schema_errors, validator
from tests.test_store_tickets import open_ticket

__all__ = ["validator"]  # the schema fixture, shared with test_cards

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADSET = [
    "my headset has no sound in webex meetings",
    "no sound from my headset",
    "Headset no sound during webex meeting",
    "my headset has no sound",
]
PRINTER = ["the printer is jammed", "printer jammed again, my password is Hunter2!x"]


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


def png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE), data[:16]
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def run_cli(*args: str, database: str, knowledge: Path = KNOWLEDGE_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": database, "KNOWLEDGE_DIR": str(knowledge)},
    )


async def ask_all(bot: Bot, fake: FakeWebex, world: dict[str, Any], texts: list[str]) -> None:
    for text in texts:
        await say(bot, fake, world["alice_room"], world["alice"], text)


# --- knowledge gaps --------------------------------------------------------------------------------------


async def test_gaps_groups_the_unanswered_and_the_stuck_largest_first(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), admin_emails="ada@example.com")
    async with Bot(fake_webex, settings) as bot:
        await ask_all(bot, fake_webex, world, [*HEADSET, *PRINTER, "Error: 1000:1002"])
        # A confident answer that did not help is a gap too.
        answer = await say(
            bot, fake_webex, world["alice_room"], world["alice"], "blank screen when I sign in"
        )
        card = next(
            m for m in reversed(list(fake_webex.messages.values())) if m.get("markdown") == answer["markdown"]
        )
        no = fake_webex.add_attachment_action(
            card["id"], world["alice"], verb(answer, "feedback", helpful=False)
        )
        before = len(fake_webex.posted_messages)
        await bot.post(fake_webex.action_created_envelope(no))
        await wait_for(lambda: len(fake_webex.posted_messages) > before, what="the answer to No")
        await bot.idle()

        refused = await say(bot, fake_webex, world["alice_room"], world["alice"], "gaps")
        assert "for the bot's admins" in refused["markdown"]
        gaps = await say(bot, fake_webex, world["admin_room"], world["admin"], "gaps 30d")
    markdown = gaps["markdown"]
    assert "Knowledge gaps, last 30 days" in markdown
    assert "7 questions without a confident answer or with “No, still stuck”" in markdown
    # Largest first: the four headset questions, then the two printer ones, then the stuck sign-in.
    first, second, third = (markdown.index(f"**{n}. ") for n in (1, 2, 3))
    assert "**1. 4 questions**" in markdown and "**2. 2 questions**" in markdown
    assert "**3. 1 question, 1 “No, still stuck”**" in markdown
    assert first < markdown.index("headset") < second < markdown.index("printer") < third
    assert markdown[third:].count("“blank screen when I sign in”") == 1
    assert "The bot offered most: Sign-in to Webex shows a blank screen [blank-screen] ×1" in markdown
    assert "Hunter2" not in markdown and "[redacted]" in markdown.replace("(redacted)", "[redacted]")
    assert "1000:1002" not in markdown  # that one was answered and nobody said No
    assert markdown.count("- “") == 3 + 2 + 1  # three examples at most per group
    assert not schema_errors(validator, card_of(gaps))


async def test_gaps_drafts_are_refused_by_knowledge_check_until_written(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path))
    async with Bot(fake_webex, settings) as bot:
        await ask_all(bot, fake_webex, world, [*HEADSET, *PRINTER])
    drafts = tmp_path / "drafts"
    out = await asyncio.to_thread(
        run_cli, "gaps", "30d", "--top", "2", "--draft", str(drafts), database=db_url(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert "1. 4 question(s)" in out.stdout and "2. 2 question(s)" in out.stdout
    written = sorted(drafts.glob("*.toml"))
    # Named after the most typical question of each group.
    assert len(written) == 2 and written[0].name.startswith("gap-headset-sound")
    assert written[1].name == "gap-printer-jammed.toml"
    draft_id = written[0].stem
    draft = written[0].read_text()
    assert f'id = "{draft_id}"' in draft and 'title = "My headset has no sound"' in draft
    assert '"no sound from my headset",' in draft
    printer = written[1].read_text()
    assert '"printer jammed again, my password is",' in printer and "Hunter2" not in printer
    assert draft.count("TODO") >= 3

    knowledge = tmp_path / "knowledge"
    shutil.copytree(KNOWLEDGE_DIR, knowledge)
    articles = knowledge / "articles.toml"
    articles.write_text(articles.read_text() + "\n" + draft)
    refused = await asyncio.to_thread(
        run_cli, "knowledge", "check", str(knowledge), database=db_url(tmp_path)
    )
    assert refused.returncode == 1
    problems = refused.stderr
    assert f"({draft_id}): summary: Value error, still a draft: the summary says TODO" in problems
    assert f"({draft_id}): steps: Value error, still a draft: steps 1, 2 say TODO; write the real" in problems

    written_up = (
        draft.replace(
            "TODO: one sentence on what is wrong, in the words of the people who asked.",
            "Your headset plays no sound in Webex meetings.",
        )
        .replace("TODO: the first thing to try.", "In the meeting, open Audio settings and pick the headset.")
        .replace(
            "TODO: what to do if that did not help (add or remove steps as needed).",
            "Unplug the headset, plug it in again and rejoin the meeting.",
        )
    )
    articles.write_text(articles.read_text().replace(draft, written_up))
    accepted = await asyncio.to_thread(
        run_cli, "knowledge", "check", str(knowledge), database=db_url(tmp_path)
    )
    assert accepted.returncode == 0, accepted.stderr
    # And the bot now answers what it could not.
    asked = await asyncio.to_thread(
        run_cli, "ask", "--json", "no sound from my headset", database=db_url(tmp_path), knowledge=knowledge
    )
    assert json.loads(asked.stdout)["matches"][0]["id"] == draft_id


# --- the stats chart ---------------------------------------------------------------------------------------


async def test_stats_sends_the_chart_as_an_upload_after_the_card(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    settings = make_settings(fake_webex, db_url(tmp_path), admin_emails="ada@example.com")
    async with Bot(fake_webex, settings) as bot:
        await ask_all(bot, fake_webex, world, ["Error: 1000:1002", "the printer is jammed"])
        assert fake_webex.uploads == []
        stats = await say(bot, fake_webex, world["admin_room"], world["admin"], "stats")
        await wait_for(lambda: len(fake_webex.uploads) == 1, what="the chart")
        await bot.idle()
    # The numbers are still in the card.
    assert (
        "Messages triaged:** 2" in stats["markdown"] and "Stuck ITSM deliveries:** none" in stats["markdown"]
    )
    [upload] = fake_webex.uploads
    assert upload.form is not None and upload.json is None
    assert upload.form["roomId"] == world["admin_room"]["id"]
    assert "per day: messages, confident answers" in upload.form["markdown"]
    assert "multipart/form-data; boundary=" in upload.headers["Content-Type"]
    [file] = upload.files
    assert (file.filename, file.content_type) == ("helpdesk-bot-stats.png", "image/png")
    assert png_size(file.data) == (800, 400)
    # Webex keeps it as the message's file, served from /contents.
    chart = next(m for m in fake_webex.messages.values() if m.get("files"))
    assert chart["roomId"] == world["admin_room"]["id"] and "attachments" not in chart
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {fake_webex.token}"}
        async with http.get(chart["files"][0], headers=headers) as resp:
            assert resp.status == 200 and resp.content_type == "image/png"
            assert await resp.read() == file.data


async def test_an_upload_webex_refuses_is_said_and_the_card_stands(
    fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path
) -> None:
    fake_webex.max_file_bytes = 1000  # smaller than any chart
    settings = make_settings(fake_webex, db_url(tmp_path), admin_emails="ada@example.com")
    async with Bot(fake_webex, settings) as bot:
        await say(bot, fake_webex, world["admin_room"], world["admin"], "stats 30d")
        await wait_for(
            lambda: "couldn't attach" in fake_webex.posted_messages[-1]["markdown"], what="the note"
        )
        await bot.idle()
        counts = await bot.app[CONTEXT].store.inbox_counts()
    assert "last 30 days" in fake_webex.posted_messages[-2]["markdown"]  # the card, then the note
    assert fake_webex.uploads == []
    refused = [r for r in fake_webex.requests if r.form is not None]
    assert [r.status for r in refused] == [413]  # refused once, not retried
    assert (
        "couldn't attach helpdesk-bot-stats.png: Webex said no (413)"
        in fake_webex.posted_messages[-1]["markdown"]
    )
    assert counts.get("done") == 1 and not counts.get("dead")


async def test_the_fake_takes_one_file_per_message_as_webex_does(fake_webex: FakeWebex) -> None:
    room = fake_webex.add_room("group", "Files")
    async with aiohttp.ClientSession() as http:

        async def post(files: int) -> tuple[int, Any]:
            form = aiohttp.FormData()
            form.add_field("roomId", room["id"])
            form.add_field("text", "two charts")
            for n in range(files):
                form.add_field(
                    "files", PNG_SIGNATURE + bytes(n), filename=f"{n}.png", content_type="image/png"
                )
            headers = {"Authorization": f"Bearer {fake_webex.token}"}
            async with http.post(f"{fake_webex.base_url}/messages", data=form, headers=headers) as resp:
                return resp.status, await resp.json()

        status, body = await post(2)
        assert status == 400 and "Only one file" in body["message"]
        status, body = await post(1)
        assert status == 200 and body["files"][0].startswith(f"{fake_webex.base_url}/contents/")
    assert len(fake_webex.uploads) == 1


async def test_stats_png_on_the_cli(fake_webex: FakeWebex, world: dict[str, Any], tmp_path: Path) -> None:
    async with Bot(fake_webex, make_settings(fake_webex, db_url(tmp_path))) as bot:
        await ask_all(bot, fake_webex, world, ["Error: 1000:603"])
    chart = tmp_path / "chart.png"
    out = await asyncio.to_thread(run_cli, "stats", "30d", "--png", str(chart), database=db_url(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "Messages triaged        1" in out.stdout and f"chart written to {chart}" in out.stdout
    assert png_size(chart.read_bytes()) == (800, 400)
    bad = await asyncio.to_thread(
        run_cli, "stats", "7d", "--png", str(tmp_path / "no-such-dir" / "c.png"), database=db_url(tmp_path)
    )
    assert bad.returncode == 1 and "cannot write the chart" in bad.stderr


# --- dead ITSM deliveries ------------------------------------------------------------------------------------


async def test_outbox_cli_lists_retries_and_drops_dead_deliveries(tmp_path: Path) -> None:
    url = db_url(tmp_path)
    store = await Store.open(url)
    try:
        first = await open_ticket(store, "t1")
        second = await open_ticket(store, "t2")
        await store.claim_ticket(first.number, assignee_id="s", assignee_name="Sam")
        for item in await store.claim_outbox("w"):
            await store.mark_outbox_failed(item.id, "HTTP 502 from the ITSM", retry_in=None)
        dead = await store.dead_deliveries()
    finally:
        await store.close()
    assert [d.ticket_number for d in dead] == [first.number, second.number]

    listed = await asyncio.to_thread(run_cli, "outbox", "list", database=url)
    assert listed.returncode == 0, listed.stderr
    assert "2 dead deliveries" in listed.stdout
    assert (
        f"{first.number:<9} ticket.created" in listed.stdout
        and "holding back 1: HTTP 502 from the ITSM" in listed.stdout
    )

    retried = await asyncio.to_thread(run_cli, "outbox", "retry", str(dead[0].id), database=url)
    assert retried.returncode == 0, retried.stderr
    assert "will be sent again" in retried.stdout
    assert (
        f"outbox item {dead[0].id} ({first.number} ticket.created, sequence 1) revived by" in retried.stderr
    )
    again = await asyncio.to_thread(run_cli, "outbox", "retry", str(dead[0].id), database=url)
    assert again.returncode == 1 and "is pending, not dead: only dead deliveries" in again.stderr

    dropped = await asyncio.to_thread(run_cli, "outbox", "drop", str(dead[1].id), database=url)
    assert dropped.returncode == 0, dropped.stderr
    assert "dropped for good" in dropped.stdout and "dropped by" in dropped.stderr
    assert "HTTP 502 from the ITSM" in dropped.stderr  # what was given up on stays in the log
    missing = await asyncio.to_thread(run_cli, "outbox", "drop", "999999", database=url)
    assert missing.returncode == 1 and "there is no outbox item 999999" in missing.stderr

    store = await Store.open(url)
    try:
        assert await store.dead_deliveries() == []
        # The revived one goes out again first, and its ticket's claim follows it.
        assert [i.event for i in await store.claim_outbox("w")] == ["ticket.created"]
    finally:
        await store.close()
