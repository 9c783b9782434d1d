"""The playground in a real browser: `python -m bot serve` in local mode, driven through headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.knowledge import KnowledgeBase
from bot.local.renderer import Renderer
from tests.conftest import KNOWLEDGE_DIR, ROOT

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError as exc:  # CI installs it; a missing browser stack must fail loudly, never skip
    PLAYWRIGHT_ERROR: str | None = f"{exc}: pip install playwright (see pyproject's test extra)"
else:
    PLAYWRIGHT_ERROR = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_PRESENT = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"
STARTUP_SECONDS = 30.0
UI_TIMEOUT_MS = 15_000
MESSAGE = "blank screen when I sign in"
NOTE = "Tried restarting twice, still blank."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="session")
def renderer_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME whose ~/.cache/helpdesk-bot holds the renderer, fetched once per session by the bot's own code."""
    home = tmp_path_factory.mktemp("home")
    renderer = Renderer(cache_dir=home / ".cache" / "helpdesk-bot")

    async def fetch() -> str:
        renderer.start()
        return await renderer.wait()

    status = asyncio.run(fetch())
    if status != "ready":
        pytest.fail(f"could not fetch the Adaptive Cards renderer with npm ({status}): {renderer.detail}")
    return home


@contextlib.contextmanager
def run_server(
    tmp_path: Path, home: Path, *, renderer_settled: bool = True, **env_overrides: str
) -> Iterator[str]:
    """A real `python -m bot serve` in local mode on a free port; yields its base URL (once the renderer
    has stopped fetching, unless renderer_settled is False)."""
    port = _free_port()
    cache = home / ".cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBEX_", "HELPDESK_", "PUBLIC_URL"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "KNOWLEDGE_DIR": str(KNOWLEDGE_DIR),
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "LOG_LEVEL": "INFO",
            "PYTHONPATH": str(ROOT),
            # The renderer cache under this HOME, whichever way the bot is told where it is.
            "HOME": str(home),
            "XDG_CACHE_HOME": str(cache),
            "RENDERER_CACHE_DIR": str(cache / "helpdesk-bot"),
            **env_overrides,
        }
    )
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        # cwd is the temp folder so that no .env of a developer's turns local mode off.
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    def server_log() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"the server exited with {process.returncode}:\n{server_log()}")
            try:
                if _get(f"{base}/readyz")[0] == 200 and (
                    not renderer_settled or b'"fetching"' not in _get(f"{base}/local/renderer")[1]
                ):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the server was not ready in {STARTUP_SECONDS:.0f}s:\n{server_log()}")
            time.sleep(0.1)
        yield base
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in server_log(), server_log()
    SERVER_LOGS[base] = log_path.read_text(errors="replace")


SERVER_LOGS: dict[str, str] = {}  # each server's whole log once it stopped, by base URL


@pytest.fixture
def server(tmp_path: Path, renderer_home: Path) -> Iterator[str]:
    with run_server(tmp_path, renderer_home) as base:
        status = json.loads(_get(f"{base}/local/renderer")[1])
        assert status["status"] == "ready", status
        yield base


@pytest.fixture
def server_without_npm(tmp_path: Path) -> Iterator[str]:
    """No renderer in the cache and no npm on the PATH."""
    home = tmp_path / "empty-home"
    home.mkdir()
    with run_server(tmp_path, home, PATH=str(Path(sys.executable).parent)) as base:
        yield base


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if PLAYWRIGHT_ERROR is not None:
        pytest.fail(f"Playwright is not installed: {PLAYWRIGHT_ERROR}")
    if not CHROMIUM_PRESENT:
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's Chromium "
            "(apt-get update && apt-get install -y chromium)"
        )
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_playground(
    browser: Browser, base: str, *, width: int = 1000, height: int = 1400
) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(UI_TIMEOUT_MS)
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on(
        "console",
        lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None,
    )
    await page.goto(base + "/")
    await expect(page.get_by_role("heading", name="Helpdesk bot playground")).to_be_visible()
    return page, problems


async def ask(page: Page, text: str) -> Any:
    """Send `text` from the employee tab; returns the bot's rendered card (a renderer DOM element)."""
    await page.get_by_label("Message the bot").fill(text)
    await page.get_by_label("Message the bot").press("Enter")
    log = page.locator("#log-employee")
    await expect(log.locator(".message.from-person", has_text=text)).to_be_visible()
    card = log.locator(".message.from-bot .ac-adaptiveCard").last
    await expect(card).to_be_visible()
    return card


async def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


async def test_feedback_yes_is_thanked_in_the_browser(
    server: str, browser: Browser, kb: KnowledgeBase
) -> None:
    page, problems = await open_playground(browser, server)
    card = await ask(page, MESSAGE)
    article = kb.articles["blank-screen"]
    await expect(card).to_contain_text(article.title)
    await expect(card).to_contain_text(article.steps[0].text)
    # Markdown in TextBlocks went through markdown-it (no literal ** left), i.e. the real renderer path.
    assert "**" not in await card.inner_text()
    # Action.OpenUrl opens a new tab (answered here, so that nothing leaves the machine).
    await page.context.route("https://helpdesk.example.com/**", lambda route: route.fulfill(body="portal"))
    async with page.expect_popup() as popup:
        await card.get_by_role("link", name="Helpdesk portal").click()
    portal = await popup.value
    await expect(portal.locator("body")).to_have_text("portal")
    assert portal.url.startswith("https://helpdesk.example.com/")
    await portal.close()
    await card.get_by_role("button", name="Yes, it helped").click()
    await expect(page.locator("#log-employee .message.from-bot").last).to_contain_text("Thanks")
    await expect(page.get_by_role("contentinfo")).to_contain_text("adaptivecards 3.")
    await screenshot(page, "playground-feedback.png")
    assert not problems, problems


async def test_an_article_preview_renders(server: str, browser: Browser, kb: KnowledgeBase) -> None:
    page, problems = await open_playground(browser, server)
    await page.get_by_role("tab", name="Preview an article").click()
    await page.get_by_label("Article", exact=True).select_option("1000:1002")
    card = page.locator("#preview .ac-adaptiveCard")
    await expect(card).to_be_visible()
    await expect(card).to_contain_text(kb.articles["1000:1002"].title)
    await screenshot(page, "playground-preview.png")
    assert not problems, problems


async def test_escalation_reaches_the_helpdesk_tab(server: str, browser: Browser) -> None:
    page, problems = await open_playground(browser, server)
    card = await ask(page, MESSAGE)
    await card.get_by_role("button", name="Contact the helpdesk").click()
    send_button = page.get_by_role("button", name="Send to the helpdesk")
    note_card = page.locator("#log-employee .ac-adaptiveCard").filter(has=send_button).last
    await expect(note_card).to_be_visible()
    # The card's Input.Text "note": its value must reach the bot merged into the submit, as in Webex.
    await note_card.get_by_role("textbox").fill(NOTE)
    await note_card.get_by_role("button", name="Send to the helpdesk").click()
    await expect(page.locator("#helpdesk-unread")).to_be_visible()
    await screenshot(page, "playground-employee.png")

    await page.get_by_role("tab", name="Helpdesk").click()
    ticket = page.locator("#log-helpdesk .ac-adaptiveCard").first
    await expect(ticket).to_be_visible()
    await expect(ticket).to_contain_text("HD-")
    await expect(ticket).to_contain_text(NOTE)
    await screenshot(page, "playground-helpdesk.png")
    assert not problems, problems


async def test_without_the_renderer_the_page_says_what_to_run(
    server_without_npm: str, browser: Browser
) -> None:
    page, problems = await open_playground(browser, server_without_npm)
    banner = page.locator("#renderer-status")
    await expect(banner).to_contain_text("npm is not installed")
    await expect(banner.locator("code")).to_contain_text("npm install --prefix ")
    await expect(banner.locator("code")).to_contain_text("adaptivecards@3")
    # Cards fall back to their markdown text, and the conversation still works.
    await page.get_by_label("Message the bot").fill(MESSAGE)
    await page.get_by_label("Message the bot").press("Enter")
    reply = page.locator("#log-employee .message.from-bot").last
    await expect(reply).to_contain_text("Sign-in to Webex shows a blank screen")
    assert await page.locator(".ac-adaptiveCard").count() == 0
    await screenshot(page, "playground-no-renderer.png")
    assert not problems, problems


# --- a first visit: the greeting, the chat layout, text replies, the helpdesk badge, the JSON view ----------

EXAMPLES = {
    "Error: 1000:1002 when I open phone services": "1000:1002",
    "blank screen when I sign in": "blank-screen",
    "okta setup": "okta-saml-setup",
}


async def bot_replies(page: Page) -> Any:
    return page.locator("#log-employee .message.from-bot")


async def test_the_page_greets_and_its_examples_ask_the_bot(
    server: str, browser: Browser, kb: KnowledgeBase
) -> None:
    # Tall enough that the README's picture shows the greeting, the question and the whole answer.
    page, problems = await open_playground(browser, server, height=1280)
    greeting = page.locator("#greeting")
    await expect(greeting).to_contain_text("I'm the helpdesk bot")
    await expect(greeting).to_contain_text("helpdesk")
    examples = greeting.get_by_role("button")
    assert await examples.all_inner_texts() == list(EXAMPLES)
    assert await page.locator("#log-employee .message").count() == 0
    await screenshot(page, "playground-greeting.png")
    for n, (text, article_id) in enumerate(EXAMPLES.items(), 1):
        await greeting.get_by_role("button", name=text).click()
        await expect(page.locator("#log-employee .message.from-person").last).to_have_text(
            re.compile(re.escape(text))
        )
        replies = await bot_replies(page)
        await expect(replies).to_have_count(n)
        await expect(replies.last.locator(".ac-adaptiveCard")).to_contain_text(kb.articles[article_id].title)
        if n == 1:
            await screenshot(page, "playground-readme.png")  # docs/images/playground.png is this one
    assert not problems, problems


async def _layout(page: Page) -> dict[str, float]:
    result: dict[str, float] = await page.evaluate(
        """() => {
          const scroller = document.getElementById("scroll-employee").getBoundingClientRect();
          const box = document.getElementById("scroll-employee");
          const last = [...document.querySelectorAll("#log-employee .message")].pop().getBoundingClientRect();
          const input = document.getElementById("message").getBoundingClientRect();
          return {
            pageScroll: document.scrollingElement.scrollHeight - window.innerHeight,
            viewport: window.innerHeight, inputTop: input.top, inputBottom: input.bottom,
            scrollerTop: scroller.top, scrollerBottom: scroller.bottom,
            lastTop: last.top, lastBottom: last.bottom,
            scrolled: box.scrollTop, overflow: box.scrollHeight - box.clientHeight,
          };
        }"""
    )
    return result


async def test_the_message_box_stays_pinned_and_the_newest_message_in_view(
    server: str, browser: Browser
) -> None:
    page, problems = await open_playground(browser, server, height=700)
    messages = ["help", MESSAGE, "my tickets", "Error: 1000:1002", "setup step 10"]
    for text in messages:
        await ask_text(page, text)
        layout = await _layout(page)
        # The page itself never scrolls: the log does, and the message box stays on screen below it.
        assert layout["pageScroll"] <= 1, layout
        assert layout["inputTop"] >= 0 and layout["inputBottom"] <= layout["viewport"], layout
        # The newest message ends inside the log's visible part.
        assert layout["scrollerTop"] < layout["lastBottom"] <= layout["scrollerBottom"] + 1, layout
    assert layout["overflow"] > 0 and layout["scrolled"] > 0, layout  # the log did have to scroll
    await screenshot(page, "playground-pinned.png")

    # Scrolled up to read: a new message still comes into view once the person sends one.
    await page.evaluate("document.getElementById('scroll-employee').scrollTop = 0")
    await ask_text(page, "okta setup")
    layout = await _layout(page)
    assert layout["scrollerTop"] < layout["lastBottom"] <= layout["scrollerBottom"] + 1, layout
    assert not problems, problems


async def ask_text(page: Page, text: str) -> None:
    """Type `text` and wait for the bot's reply to it (a card or a text message)."""
    replies = await bot_replies(page)
    before = await replies.count()
    box = page.get_by_label("Message the bot")
    await box.fill(text)
    await box.press("Enter")
    await expect(replies).to_have_count(before + 1)
    # Drawn and settled: cards take a frame or two to render and the log to follow them down.
    await page.wait_for_timeout(300)


async def test_my_tickets_shows_markdown_drawn_not_raw(server: str, browser: Browser) -> None:
    page, problems = await open_playground(browser, server, height=700)
    await ask_text(page, "my tickets")
    reply = (await bot_replies(page)).last
    await expect(reply.locator(".text.md strong")).to_have_text("Your tickets")
    assert "**" not in await reply.inner_text()
    await screenshot(page, "playground-my-tickets.png")
    assert not problems, problems


async def test_two_digit_step_numbers_are_not_clipped(server: str, browser: Browser) -> None:
    page, problems = await open_playground(browser, server, height=900)
    await ask_text(page, "setup step 10")
    card = (await bot_replies(page)).last.locator(".ac-adaptiveCard")
    await expect(card).to_contain_text("Steps 9")
    lists = await card.evaluate(
        """(card) => [...card.querySelectorAll("ol")].map((ol) => {
          const li = ol.querySelector("li");
          const style = getComputedStyle(li);
          const canvas = document.createElement("canvas").getContext("2d");
          canvas.font = `${style.fontStyle} ${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
          const last = Number(ol.getAttribute("start") || 1) + ol.children.length - 1;
          // An outside marker ("12. ") sits in the list's left padding; the text block clips what sticks out.
          return { last, padding: parseFloat(getComputedStyle(ol).paddingLeft),
                   marker: canvas.measureText(`${last}. `).width };
        })"""
    )
    assert any(item["last"] >= 12 for item in lists), lists
    for item in lists:
        assert item["padding"] >= item["marker"], f"step {item['last']}'s number is clipped: {item}"
    await card.screenshot(path=str(ARTIFACTS / "playground-steps-10-12.png"))
    assert not problems, problems


async def test_the_helpdesk_badge_counts_only_unread_messages_across_reloads(
    server: str, browser: Browser
) -> None:
    page, problems = await open_playground(browser, server, height=900)
    badge = page.locator("#helpdesk-unread")
    card = await ask(page, MESSAGE)
    await card.get_by_role("button", name="Contact the helpdesk").click()
    await send_to_helpdesk(page, NOTE)
    await expect(badge).to_have_text("1 new")
    # Not read yet: still new after a reload.
    await page.reload()
    await expect(page.locator("#log-helpdesk .message")).to_have_count(1)
    await expect(badge).to_have_text("1 new")
    # Read it, come back, reload: nothing is new.
    await page.get_by_role("tab", name="Helpdesk").click()
    await expect(badge).to_be_hidden()
    await page.get_by_role("tab", name="Employee").click()
    await page.reload()
    await expect(page.locator("#log-helpdesk .message")).to_have_count(1)
    await page.wait_for_timeout(500)  # the badge is drawn with the first poll's answer, already in
    await expect(badge).to_be_hidden()
    # A second ticket after the reload is counted, and only it.
    await ask_text(page, "talk to a human")
    await send_to_helpdesk(page, "Second try.")
    await expect(page.locator("#log-helpdesk .message")).to_have_count(2)
    await expect(badge).to_have_text("1 new")
    await screenshot(page, "playground-badge.png")
    assert not problems, problems


async def send_to_helpdesk(page: Page, note: str) -> None:
    send_button = page.get_by_role("button", name="Send to the helpdesk")
    note_card = page.locator("#log-employee .ac-adaptiveCard").filter(has=send_button).last
    await expect(note_card).to_be_visible()
    await note_card.get_by_role("textbox").fill(note)
    await note_card.get_by_role("button", name="Send to the helpdesk").click()


async def json_blocks(message: Any) -> list[Any]:
    """Open a message's JSON view; each <pre> in it, parsed."""
    await message.get_by_role("button", name="JSON", exact=True).first.click()
    region = message.get_by_role("region", name="JSON").first
    await expect(region.locator("pre").first).to_be_visible()
    return [json.loads(text) for text in await region.locator("pre").all_inner_texts()]


async def test_the_json_view_shows_the_card_and_the_event_as_webex_sends_them(
    server: str, browser: Browser
) -> None:
    page, problems = await open_playground(browser, server, height=1100)
    card = await ask(page, MESSAGE)
    mine = page.locator("#log-employee .message.from-person").last
    webhook, message = await json_blocks(mine)
    assert (webhook["resource"], webhook["event"]) == ("messages", "created")
    assert webhook["data"]["id"] == message["id"] and "text" not in webhook["data"]  # webhooks carry no text
    assert message["text"] == MESSAGE and message["roomType"] == "direct"

    reply = page.locator("#log-employee .message.from-bot").last
    # "Text version" sits beside "JSON" under a card.
    await expect(reply.locator(".views button")).to_have_text(["Text version", "JSON"])
    content, posted = await json_blocks(reply)
    assert content["type"] == "AdaptiveCard" and content["version"] == "1.3"
    [attachment] = posted["attachments"]
    assert attachment == {"contentType": "application/vnd.microsoft.card.adaptive", "content": content}
    assert posted["markdown"] and "parentId" not in posted  # a direct space: no thread, and no null sent
    await screenshot(page, "playground-json.png")

    await card.get_by_role("button", name="Yes, it helped").click()
    note = page.locator(f'[data-message-id="{posted["id"]}"] .note', has_text="Sent to the bot")
    await expect(note).to_be_visible()
    webhook, action = await json_blocks(note)
    assert (webhook["resource"], webhook["data"]["messageId"]) == ("attachmentActions", posted["id"])
    assert action["inputs"]["verb"] == "feedback" and action["id"] == webhook["data"]["id"]
    assert not problems, problems


FAKE_SLOW_NPM = """#!{python}
# npm as the bot runs it (install --prefix DIR ... --loglevel=http), slowed down, with the real files.
import shutil, sys, time
prefix = sys.argv[sys.argv.index("--prefix") + 1]
packages = {{"adaptivecards": "3.0.6", "swiper": "11.0.0", "markdown-it": "14.1.0"}}
for name in packages:
    print(f"npm http fetch GET 200 https://registry.npmjs.org/{{name}} 12ms (cache updated)", flush=True)
    time.sleep({step})
for name, version in packages.items():
    print(f"npm http fetch GET 200 https://registry.npmjs.org/{{name}}/-/{{name}}-{{version}}.tgz 30ms", flush=True)
    time.sleep({step})
shutil.copytree({source!r}, prefix + "/node_modules")
print("added 3 packages in 6s")
"""


async def test_the_first_fetch_shows_its_progress_in_the_log_and_on_the_page(
    tmp_path: Path, renderer_home: Path, browser: Browser, kb: KnowledgeBase
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"
    source = renderer_home / ".cache" / "helpdesk-bot" / "npm" / "node_modules"
    npm.write_text(FAKE_SLOW_NPM.format(python=sys.executable, step=1.0, source=str(source)))
    npm.chmod(0o755)
    home = tmp_path / "first-run-home"
    home.mkdir()
    path = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}"
    with run_server(tmp_path, home, renderer_settled=False, PATH=path) as base:
        page, problems = await open_playground(browser, base, height=700)
        banner = page.locator("#renderer-status")
        await expect(banner).to_contain_text("Fetching the Adaptive Cards renderer with npm")
        await expect(banner).to_contain_text(re.compile(r"3 packages resolved, [12] of 3 downloaded"))
        await expect(banner.locator("progress")).to_be_visible()
        await screenshot(page, "playground-fetching.png")
        # Done: the banner goes and cards render, without a reload.
        await expect(banner).to_be_hidden(timeout=30_000)
        card = await ask(page, MESSAGE)
        await expect(card).to_contain_text(kb.articles["blank-screen"].title)
        assert not problems, problems
    log = SERVER_LOGS[base]
    assert "first start: fetching the Adaptive Cards renderer with npm" in log
    assert "fetching the Adaptive Cards renderer: 3 packages resolved, 1 of 3 downloaded" in log
    assert re.search(r"Adaptive Cards renderer ready in \d+\.\d s", log), log


async def test_the_stats_chart_shows_in_the_playground(
    tmp_path: Path, renderer_home: Path, browser: Browser
) -> None:
    with run_server(tmp_path, renderer_home, ADMIN_EMAILS="you@example.com") as base:
        page, problems = await open_playground(browser, base)
        await ask(page, MESSAGE)
        card = await ask(page, "stats")
        await expect(card).to_contain_text("Messages triaged")
        chart = page.locator("#log-employee .message.from-bot img.upload").last
        await expect(chart).to_be_visible()
        # Drawn, not a broken-image box: the PNG arrived and decoded at its size.
        size = await chart.evaluate("img => [img.complete, img.naturalWidth, img.naturalHeight]")
        assert size == [True, 800, 400], size
        assert "per day: messages, confident answers" in (await chart.get_attribute("alt") or "")
        await chart.scroll_into_view_if_needed()
        await screenshot(page, "playground-stats-chart.png")
        assert not problems, problems


# Everything a person might type that Webex or the card renderer would turn into a link, a mention or markup.
ECHOED = (
    "zorblax evil.example.com www.evil.io mailto:boss@evil.example javascript:alert(1) ~~struck~~ "
    "| a | b | <@all> @all [click](https://evil.example) *bold* _it_ `code` a\\b &lt;b&gt;"
)


def _uncovered(chars: set[str]) -> list[str]:
    """The characters no installed font has a glyph for: Chromium draws those as empty boxes."""
    missing = []
    for ch in sorted(chars):
        fonts = subprocess.run(
            ["fc-list", f":charset={ord(ch):x}", "family"], capture_output=True, text=True, check=True
        ).stdout
        if not fonts.strip():
            missing.append(f"U+{ord(ch):04X} {ch}")
    return missing


async def test_echoed_text_renders_inert_and_readable(server: str, browser: Browser) -> None:
    page, problems = await open_playground(browser, server)
    card = await ask(page, ECHOED)
    echo = card.locator(".ac-textBlock", has_text="zorblax").last
    await expect(echo).to_be_visible()
    shown = await echo.inner_text()
    # Nothing live: no link, strike-through, table, emphasis or code came out of the person's words.
    for tag in ("a", "del", "s", "table", "em", "strong", "code"):
        assert await echo.locator(tag).count() == 0, f"<{tag}> in the echo: {shown!r}"
    hrefs = await card.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert not [h for h in hrefs if "evil" in h], hrefs
    assert "@all" not in shown and "<" not in shown
    # Readable: every character has a glyph in the machine's fonts (full-width look-alikes have none here).
    assert _uncovered({ch for ch in shown if not ch.isascii()}) == []
    assert "evil(.)example(.)com" in shown and "mailto(:)" in shown and "javascript(:)" in shown
    await screenshot(page, "playground-echo.png")
    assert not problems, problems
