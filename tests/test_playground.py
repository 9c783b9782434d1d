"""Local mode's playground over HTTP: the page, messages and card submits through the real pipeline, the renderer."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bot.app import create_app
from bot.config import Settings
from bot.keys import CONTEXT, LOCAL, RENDERER
from bot.knowledge import KnowledgeBase
from bot.local.renderer import PACKAGES, VENDOR_FILES, Renderer
from bot.local.transport import AGENT_EMAIL, LOCAL_HELPDESK_ROOM, person_id
from tests.conftest import KNOWLEDGE_DIR
from tests.harness import FAST_WORKER, wait_for

CARD = "application/vnd.microsoft.card.adaptive"
BOT_ID = "local-bot"


def local_settings(tmp_path: Path, **overrides: Any) -> Settings:
    # No token is local mode; passed explicitly so a token in the environment cannot leave it.
    values: dict[str, Any] = {
        "webex_access_token": None,
        "database_url": f"sqlite:///{tmp_path}/bot.db",
        "knowledge_dir": KNOWLEDGE_DIR,
        **overrides,
    }
    return Settings(_env_file=None, **values)


async def start(app: web.Application) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    await wait_for(lambda: app[CONTEXT].me is not None, what="the bot to learn its identity")
    return client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    app = create_app(local_settings(tmp_path), worker=FAST_WORKER)
    # No npm here: these tests must not touch the network. The renderer's own tests are below.
    app[RENDERER] = Renderer(cache_dir=tmp_path / "cache", npm=str(tmp_path / "no-such-npm"))
    c = await start(app)
    yield c
    await c.close()


async def bot_messages(
    client: TestClient[Any, Any], count: int, *, room: str | None = None, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Long-poll GET /local/messages until the bot has posted `count` messages in the space."""
    params = {"room": room} if room else {}
    found: list[dict[str, Any]] = []
    cursor = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.get("/local/messages", params={**params, "after": cursor, "wait": 1})
        assert resp.status == 200
        page = await resp.json()
        found += [m for m in page["items"] if m["personId"] == BOT_ID]
        cursor = page["cursor"]
        if len(found) >= count:
            return found
    raise AssertionError(f"timed out waiting for {count} bot message(s); got {found}")


def card_of(message: dict[str, Any]) -> dict[str, Any]:
    attachments = message["attachments"]
    assert len(attachments) == 1 and attachments[0]["contentType"] == CARD
    card: dict[str, Any] = attachments[0]["content"]
    return card


def actions(card: dict[str, Any]) -> list[dict[str, Any]]:
    """Every action of a card, ShowCard sub-cards included, in order."""
    found: list[dict[str, Any]] = []
    for action in card.get("actions", []):
        found.append(action)
        if action["type"] == "Action.ShowCard":
            found += actions(action["card"])
    for element in card.get("body", []):
        if element.get("type") == "ActionSet":
            found += actions({"actions": element["actions"]})
    return found


def submit_titled(card: dict[str, Any], title: str) -> dict[str, Any]:
    for action in actions(card):
        if action["type"] == "Action.Submit" and action["title"] == title:
            data: dict[str, Any] = action["data"]
            return data
    raise AssertionError(f"no Action.Submit titled {title!r} in {[a.get('title') for a in actions(card)]}")


async def say(client: TestClient[Any, Any], text: str, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/local/messages", json={"text": text, **extra})
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["status"] == "queued"
    return body


async def press(client: TestClient[Any, Any], message_id: str, inputs: dict[str, Any], **extra: Any) -> None:
    resp = await client.post("/local/actions", json={"message_id": message_id, "inputs": inputs, **extra})
    assert resp.status == 200, await resp.text()


# -- the page ---------------------------------------------------------------------------------------


async def test_the_page_and_its_files_are_served(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    html = await resp.text()
    assert "Helpdesk bot playground" in html
    assert "MIT licence" in html  # the renderer's licence is stated in the footer
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    for path in ("/playground/playground.js", "/playground/playground.css"):
        assert (await client.get(path)).status == 200, path
    config = await (await client.get("/local/config")).json()
    assert config["helpdesk"] == {"email": AGENT_EMAIL, "room": LOCAL_HELPDESK_ROOM}
    assert config["bot"]["id"] == BOT_ID


# -- messages and card submits go through the real pipeline -----------------------------------------


async def test_a_message_gets_a_card_reply(client: TestClient[Any, Any], kb: KnowledgeBase) -> None:
    sent = await say(client, "blank screen when I sign in")
    [reply] = await bot_messages(client, 1)
    everything = (await (await client.get("/local/messages")).json())["items"]
    assert [m["id"] for m in everything] == [sent["id"], reply["id"]]  # the user's message, then the bot's
    assert everything[0]["text"] == "blank screen when I sign in"
    card = card_of(reply)
    assert card["type"] == "AdaptiveCard"
    article = kb.articles["blank-screen"]
    assert article.title in json.dumps(card, ensure_ascii=False)
    assert reply["markdown"]  # the fallback Webex shows without cards
    assert reply["roomId"] == sent["roomId"]


async def test_a_card_submit_round_trips(client: TestClient[Any, Any]) -> None:
    await say(client, "blank screen when I sign in")
    [answer] = await bot_messages(client, 1)
    await press(client, answer["id"], submit_titled(card_of(answer), "Yes, it helped"))
    _, thanks = await bot_messages(client, 2)
    assert "Thanks" in thanks["markdown"]


async def test_a_submit_on_an_unknown_message_is_404(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/local/actions", json={"message_id": "nope", "inputs": {"verb": "feedback"}})
    assert resp.status == 404


async def test_escalation_reaches_the_helpdesk_space(client: TestClient[Any, Any]) -> None:
    await say(client, "blank screen when I sign in")
    [answer] = await bot_messages(client, 1)
    await press(client, answer["id"], submit_titled(card_of(answer), "Contact the helpdesk"))
    _, note_card = await bot_messages(client, 2)
    # Webex merges the card's input values into the submit data.
    data = submit_titled(card_of(note_card), "Send to the helpdesk")
    await press(client, note_card["id"], {**data, "note": "Tried restarting twice."})
    [ticket] = await bot_messages(client, 1, room=LOCAL_HELPDESK_ROOM)
    assert ticket["roomType"] == "group"
    assert "HD-" in json.dumps(card_of(ticket))


async def test_bad_requests_are_400(client: TestClient[Any, Any]) -> None:
    bad_json = await client.post(
        "/local/messages", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad_json.status == 400
    assert "error" in await bad_json.json()
    assert (await client.post("/local/messages", json={"text": ""})).status == 400
    assert (await client.post("/local/messages", json={"text": "hi", "email": "not-an-email"})).status == 400
    assert (await client.post("/local/actions", json={"message_id": "x"})).status == 400
    assert (await client.get("/local/messages", params={"after": "-1"})).status == 400
    assert (await client.get("/local/messages", params={"wait": "600"})).status == 400
    assert (await client.get("/local/messages", params={"room": "no-such-room"})).status == 404


async def test_a_long_poll_answers_when_a_message_arrives(client: TestClient[Any, Any]) -> None:
    cursor = (await (await client.get("/local/messages")).json())["cursor"]
    started = time.monotonic()
    poll = asyncio.create_task(client.get("/local/messages", params={"after": cursor, "wait": 20}))
    await asyncio.sleep(0.2)
    assert not poll.done()
    await say(client, "hello")
    page = await (await poll).json()
    assert time.monotonic() - started < 10
    assert page["items"][0]["text"] == "hello"
    assert page["cursor"] > cursor


async def test_the_helpdesk_space_has_its_agent(client: TestClient[Any, Any]) -> None:
    local = client.app[LOCAL]
    assert await local.is_member(LOCAL_HELPDESK_ROOM, person_id(AGENT_EMAIL))
    assert not await local.is_member(LOCAL_HELPDESK_ROOM, person_id("you@example.com"))
    posted = await local.post_message({"roomId": LOCAL_HELPDESK_ROOM, "markdown": "a ticket"})
    page = await (await client.get("/local/messages", params={"room": LOCAL_HELPDESK_ROOM})).json()
    assert [m["id"] for m in page["items"]] == [posted.id]
    assert page["items"][0]["roomType"] == "group"
    # Direct messages to a person land in that person's own space, not the helpdesk's.
    direct = await local.post_message({"toPersonEmail": "someone@example.com", "markdown": "hi"})
    page = await (await client.get("/local/messages", params={"email": "someone@example.com"})).json()
    assert [m["id"] for m in page["items"]] == [direct.id]


# -- articles ---------------------------------------------------------------------------------------


async def test_articles_are_listed_and_previewed(client: TestClient[Any, Any], kb: KnowledgeBase) -> None:
    items = (await (await client.get("/local/articles")).json())["items"]
    assert {a["id"] for a in items} == set(kb.articles)
    assert {"id": "blank-screen", "title": kb.articles["blank-screen"].title} | {
        "kind": "symptom",
        "code": None,
    } in items
    resp = await client.get("/local/articles/1000%3A1002/card")
    assert resp.status == 200
    preview = await resp.json()
    assert preview["card"]["type"] == "AdaptiveCard"
    assert "1000:1002" in preview["markdown"]
    assert (await client.get("/local/articles/no-such-article/card")).status == 404


# -- the renderer -----------------------------------------------------------------------------------


async def renderer_settled(client: TestClient[Any, Any]) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status: dict[str, Any] = await (await client.get("/local/renderer")).json()
        if status["status"] != "fetching":
            return status
        await asyncio.sleep(0.05)
    raise AssertionError("the renderer fetch did not finish")


async def test_without_npm_the_status_says_what_to_run(client: TestClient[Any, Any], tmp_path: Path) -> None:
    status = await renderer_settled(client)
    command = f"npm install --prefix {tmp_path / 'cache' / 'npm'} {' '.join(PACKAGES)}"
    assert status["status"] == "missing-npm"
    assert status["command"] == command
    assert command in status["detail"]
    assert (await client.get("/vendor/adaptivecards.min.js")).status == 404
    assert (await client.get("/")).status == 200  # the page still works, cards show as text


def fill_cache(npm_dir: Path, version: str = "3.0.6") -> None:
    """What `npm install` leaves behind, as far as the bot looks."""
    modules = npm_dir / "node_modules"
    for relative in VENDOR_FILES.values():
        (modules / relative).parent.mkdir(parents=True, exist_ok=True)
        (modules / relative).write_text(f"/* {relative} */\n")
    versions = {"adaptivecards": version, "markdown-it": "14.1.0"}
    for name, v in versions.items():
        (modules / name / "package.json").write_text(json.dumps({"version": v, "license": "MIT"}))


FAKE_NPM = """#!/bin/sh
# A stand-in for npm: `install --prefix DIR PKG...` leaves the renderer's files under DIR.
set -e
echo "$@" >> "{log}"
[ "$1" = install ] && [ "$2" = --prefix ] || exit 2
{fail}
m="$3/node_modules"
mkdir -p "$m/adaptivecards/dist" "$m/markdown-it/dist"
echo '// renderer' > "$m/adaptivecards/dist/adaptivecards.min.js"
echo '/* css */' > "$m/adaptivecards/dist/adaptivecards.css"
echo '// markdown-it' > "$m/markdown-it/dist/markdown-it.min.js"
echo '{{"version": "3.0.6", "license": "MIT"}}' > "$m/adaptivecards/package.json"
echo '{{"version": "14.1.0", "license": "MIT"}}' > "$m/markdown-it/package.json"
"""


def fake_npm(tmp_path: Path, *, fail: bool = False) -> Path:
    script = tmp_path / "fake-npm"
    fail_line = 'echo "npm error 404 Not Found" >&2; exit 1' if fail else ""
    script.write_text(FAKE_NPM.format(log=tmp_path / "npm.log", fail=fail_line))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def start_with(tmp_path: Path, renderer: Renderer) -> TestClient[Any, Any]:
    app = create_app(local_settings(tmp_path), worker=FAST_WORKER)
    app[RENDERER] = renderer
    return await start(app)


async def test_the_renderer_is_fetched_once_then_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    npm = fake_npm(tmp_path)
    client = await start_with(tmp_path, Renderer(cache_dir=cache, npm=str(npm)))
    try:
        status = await renderer_settled(client)
        assert status["status"] == "ready", status
        assert status["packages"]["adaptivecards"] == {"version": "3.0.6", "license": "MIT"}
        js = await client.get("/vendor/adaptivecards.min.js")
        assert js.status == 200 and "// renderer" in await js.text()
        assert (await client.get("/vendor/markdown-it.min.js")).status == 200
        assert (await client.get("/vendor/package.json")).status == 404  # only the listed files
    finally:
        await client.close()
    assert (tmp_path / "npm.log").read_text().count("install") == 1
    assert [p.name for p in cache.iterdir()] == ["npm"]  # the staging folder is gone

    # A second start finds the cache ready at once and runs no npm.
    again = Renderer(cache_dir=cache, npm=str(npm))
    client = await start_with(tmp_path, again)
    try:
        assert again.status == "ready"
        assert (await (await client.get("/local/renderer")).json())["status"] == "ready"
    finally:
        await client.close()
    assert (tmp_path / "npm.log").read_text().count("install") == 1


async def test_a_failed_fetch_says_why_and_what_to_run(tmp_path: Path) -> None:
    client = await start_with(
        tmp_path, Renderer(cache_dir=tmp_path / "cache", npm=str(fake_npm(tmp_path, fail=True)))
    )
    try:
        status = await renderer_settled(client)
        assert status["status"] == "failed"
        assert "404 Not Found" in status["detail"]
        assert status["command"].startswith("npm install --prefix ")
        # Running the command by hand fixes it without a restart.
        fill_cache(tmp_path / "cache" / "npm")
        assert (await (await client.get("/local/renderer")).json())["status"] == "ready"
        assert (await client.get("/vendor/adaptivecards.css")).status == 200
    finally:
        await client.close()


async def test_a_cache_of_another_major_version_is_fetched_again(tmp_path: Path) -> None:
    fill_cache(tmp_path / "cache" / "npm", version="2.11.3")
    renderer = Renderer(cache_dir=tmp_path / "cache", npm=str(fake_npm(tmp_path)))
    client = await start_with(tmp_path, renderer)
    try:
        assert (await renderer_settled(client))["packages"]["adaptivecards"]["version"] == "3.0.6"
    finally:
        await client.close()


async def test_stats_show_their_chart_in_the_playground(tmp_path: Path) -> None:
    app = create_app(local_settings(tmp_path, admin_emails="you@example.com"), worker=FAST_WORKER)
    app[RENDERER] = Renderer(cache_dir=tmp_path / "cache", npm=str(tmp_path / "no-such-npm"))
    client = await start(app)
    try:
        await say(client, "Error: 1000:1002")
        await bot_messages(client, 1)
        await say(client, "stats 7d")
        card, chart = (await bot_messages(client, 3))[1:]
        assert "Messages triaged:** 1" in card["markdown"]
        assert "per day: messages, confident answers" in chart["markdown"] and not chart["attachments"]
        [url] = chart["files"]
        resp = await client.get(url)
        assert resp.status == 200 and resp.content_type == "image/png"
        assert (await resp.read()).startswith(b"\x89PNG\r\n\x1a\n")
        assert (await client.get("/local/files/no-such-file")).status == 404
    finally:
        await client.close()
