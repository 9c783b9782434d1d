"""Webhook registration (webexpythonsdk) and the async reactivation watchdog, against the fake Webex over HTTP."""

from __future__ import annotations

import asyncio
import copy
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
import pytest_asyncio
from pydantic import SecretStr

from bot.config import Settings
from bot.models import Person, Webhook
from bot.registration import (
    WEBHOOK_NAMES,
    RegistrationChange,
    RegistrationError,
    WebhookRow,
    delete_webhooks,
    format_changes,
    format_webhooks,
    list_webhooks,
    plan_registration,
    reactivate_inactive,
    register_webhooks,
    target_url_for,
    watch_webhooks,
    whoami,
)
from bot.webex import WebexClient
from tests import fakewebex
from tests.fakewebex import FakeWebex

# Bound here so pytest finds the fixture; pytest_plugins would re-import the already imported module.
fake_webex = fakewebex.fake_webex

T = TypeVar("T")

PUBLIC_URL = "https://bot.example.com"
TARGET_URL = "https://bot.example.com/webhooks/webex"
SECRET = "whsec-0123456789abcdef"
MESSAGES = WEBHOOK_NAMES["messages/created"]
ACTIONS = WEBHOOK_NAMES["attachmentActions/created"]


def make_settings(fake: FakeWebex, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "webex_access_token": SecretStr(fake.token),
        "webex_webhook_secret": SecretStr(SECRET),
        "webex_api_url": fake.base_url,
        "public_url": PUBLIC_URL,
    }
    values.update(overrides)
    # Explicit values win over the environment, and no .env file is read, so the host cannot leak in.
    return Settings(_env_file=None, **values)


async def off_loop(func: Callable[[Settings], T], settings: Settings) -> T:
    # The SDK blocks; on the loop thread it would deadlock against the fake served by that same loop.
    return await asyncio.to_thread(func, settings)


def ours(fake: FakeWebex) -> dict[str, dict[str, Any]]:
    """Our webhooks in the fake, keyed by name (fails loudly if a name is duplicated)."""
    found: dict[str, dict[str, Any]] = {}
    for webhook in fake.webhooks.values():
        if webhook["name"] in WEBHOOK_NAMES.values():
            assert webhook["name"] not in found, f"duplicate {webhook['name']}"
            found[webhook["name"]] = webhook
    return found


def writes(fake: FakeWebex) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in fake.requests if r.method in ("POST", "PUT", "DELETE")]


@pytest.fixture
def settings(fake_webex: FakeWebex) -> Settings:
    return make_settings(fake_webex)


@pytest_asyncio.fixture
async def client(fake_webex: FakeWebex) -> AsyncIterator[WebexClient]:
    async def no_sleep(_: float) -> None:
        return None

    async with aiohttp.ClientSession() as session:
        yield WebexClient(session, fake_webex.base_url, fake_webex.token, sleep=no_sleep)


# ---- register -------------------------------------------------------------------------------------


async def test_first_register_creates_both_with_the_secret_and_target_url(
    fake_webex: FakeWebex, settings: Settings
) -> None:
    changes = await off_loop(register_webhooks, settings)

    registered = ours(fake_webex)
    assert set(registered) == {MESSAGES, ACTIONS}
    assert (registered[MESSAGES]["resource"], registered[MESSAGES]["event"]) == ("messages", "created")
    assert (registered[ACTIONS]["resource"], registered[ACTIONS]["event"]) == ("attachmentActions", "created")
    for webhook in registered.values():
        assert webhook["targetUrl"] == TARGET_URL
        assert webhook["secret"] == SECRET
        assert webhook["status"] == "active"
        assert "filter" not in webhook
    assert [(c.action, c.name) for c in changes] == [("created", MESSAGES), ("created", ACTIONS)]
    assert {c.webhook_id for c in changes} == {w["id"] for w in registered.values()}
    assert writes(fake_webex) == [("POST", "/webhooks"), ("POST", "/webhooks")]


async def test_second_register_changes_nothing(fake_webex: FakeWebex, settings: Settings) -> None:
    await off_loop(register_webhooks, settings)
    before = copy.deepcopy(fake_webex.webhooks)
    fake_webex.requests.clear()

    changes = await off_loop(register_webhooks, settings)

    assert [c.action for c in changes] == ["unchanged", "unchanged"]
    assert {c.webhook_id for c in changes} == set(before)
    assert writes(fake_webex) == []
    assert fake_webex.webhooks == before


async def test_changing_public_url_updates_in_place(fake_webex: FakeWebex, settings: Settings) -> None:
    await off_loop(register_webhooks, settings)
    ids_before = {name: w["id"] for name, w in ours(fake_webex).items()}
    fake_webex.requests.clear()

    moved = make_settings(fake_webex, public_url="https://new.example.com/helpdesk/")
    changes = await off_loop(register_webhooks, moved)

    registered = ours(fake_webex)
    assert {name: w["id"] for name, w in registered.items()} == ids_before
    assert {w["targetUrl"] for w in registered.values()} == {
        "https://new.example.com/helpdesk/webhooks/webex"
    }
    assert [c.action for c in changes] == ["updated", "updated"]
    assert all(any(r.startswith("targetUrl") for r in c.reasons) for c in changes)
    assert sorted(writes(fake_webex)) == sorted(("PUT", f"/webhooks/{i}") for i in ids_before.values())
    puts = [r.json for r in fake_webex.requests if r.method == "PUT"]
    assert all(body["status"] == "active" and body["secret"] == SECRET for body in puts)


async def test_rotating_the_secret_updates_it(fake_webex: FakeWebex, settings: Settings) -> None:
    await off_loop(register_webhooks, settings)

    changes = await off_loop(
        register_webhooks, make_settings(fake_webex, webex_webhook_secret=SecretStr("rotated-secret"))
    )

    assert [(c.action, c.reasons) for c in changes] == [("updated", ("secret",))] * 2
    assert {w["secret"] for w in ours(fake_webex).values()} == {"rotated-secret"}


async def test_register_reactivates_an_inactive_webhook_of_ours(
    fake_webex: FakeWebex, settings: Settings
) -> None:
    disabled = fake_webex.add_webhook(
        MESSAGES, TARGET_URL, "messages", "created", secret=SECRET, status="inactive"
    )

    changes = await off_loop(register_webhooks, settings)

    assert fake_webex.webhooks[disabled["id"]]["status"] == "active"
    by_name = {c.name: c for c in changes}
    assert by_name[MESSAGES].action == "updated"
    assert by_name[MESSAGES].webhook_id == disabled["id"]
    assert by_name[MESSAGES].reasons == ("status inactive -> active",)
    assert by_name[ACTIONS].action == "created"
    assert len(ours(fake_webex)) == 2


async def test_foreign_webhook_survives_register_and_delete(
    fake_webex: FakeWebex, settings: Settings
) -> None:
    # Same resource, even the same target: only the name says it is not ours.
    foreign = fake_webex.add_webhook(
        "crm-sync messages", "https://crm.example.com/hook", "messages", "created", status="inactive"
    )
    snapshot = copy.deepcopy(foreign)

    await off_loop(register_webhooks, settings)
    await off_loop(register_webhooks, make_settings(fake_webex, public_url="https://moved.example.com"))
    deleted = await off_loop(delete_webhooks, settings)

    assert fake_webex.webhooks == {foreign["id"]: snapshot}
    assert foreign["id"] not in deleted
    assert not any(foreign["id"] in path for _, path in writes(fake_webex))


async def test_duplicates_update_the_first_and_are_reported_not_deleted(
    fake_webex: FakeWebex, settings: Settings
) -> None:
    first = fake_webex.add_webhook(MESSAGES, "https://old.example.com/webhooks/webex", "messages", "created")
    second = fake_webex.add_webhook(MESSAGES, "https://older.example.com/hook", "messages", "created")
    second_before = copy.deepcopy(second)

    changes = await off_loop(register_webhooks, settings)

    assert [(c.action, c.name, c.webhook_id) for c in changes if c.name == MESSAGES] == [
        ("updated", MESSAGES, first["id"]),
        ("duplicate", MESSAGES, second["id"]),
    ]
    assert fake_webex.webhooks[first["id"]]["targetUrl"] == TARGET_URL
    assert fake_webex.webhooks[second["id"]] == second_before
    assert ("POST", "/webhooks") in writes(fake_webex)  # the card-actions webhook was still missing
    assert sum(1 for w in fake_webex.webhooks.values() if w["name"] == MESSAGES) == 2


async def test_namesake_with_the_wrong_resource_is_reported_and_a_correct_one_created(
    fake_webex: FakeWebex, settings: Settings
) -> None:
    # A PUT cannot change resource/event, so updating this one would never give us message events.
    wrong = fake_webex.add_webhook(MESSAGES, TARGET_URL, "memberships", "created", secret=SECRET)

    changes = await off_loop(register_webhooks, settings)

    messages = [c for c in changes if c.name == MESSAGES]
    assert [c.action for c in messages] == ["created", "duplicate"]
    assert messages[1].webhook_id == wrong["id"]
    assert "memberships/created" in messages[1].reasons[0]
    assert fake_webex.webhooks[wrong["id"]]["resource"] == "memberships"
    assert any(
        w["name"] == MESSAGES and w["resource"] == "messages" and w["id"] != wrong["id"]
        for w in fake_webex.webhooks.values()
    )


async def test_register_finds_ours_beyond_the_first_page(fake_webex: FakeWebex, settings: Settings) -> None:
    for n in range(105):  # the SDK asks for 100 per page
        fake_webex.add_webhook(f"other-{n}", "https://other.example.com", "rooms", "created")
    await off_loop(register_webhooks, settings)
    fake_webex.requests.clear()

    changes = await off_loop(register_webhooks, settings)

    assert [c.action for c in changes] == ["unchanged", "unchanged"]
    assert any("cursor" in r.query for r in fake_webex.requests if r.path == "/webhooks")
    assert writes(fake_webex) == []


# ---- list, delete, whoami -------------------------------------------------------------------------


async def test_list_marks_ours(fake_webex: FakeWebex, settings: Settings) -> None:
    await off_loop(register_webhooks, settings)
    foreign = fake_webex.add_webhook("crm-sync", "https://crm.example.com/hook", "rooms", "created")

    rows = await off_loop(list_webhooks, settings)

    assert {(r.name, r.ours) for r in rows} == {(MESSAGES, True), (ACTIONS, True), ("crm-sync", False)}
    assert next(r for r in rows if r.id == foreign["id"]).target_url == "https://crm.example.com/hook"


async def test_delete_removes_ours_only(fake_webex: FakeWebex, settings: Settings) -> None:
    await off_loop(register_webhooks, settings)
    ids = {w["id"] for w in ours(fake_webex).values()}
    foreign = fake_webex.add_webhook("crm-sync", TARGET_URL, "messages", "created")

    deleted = await off_loop(delete_webhooks, settings)

    assert set(deleted) == ids
    assert list(fake_webex.webhooks) == [foreign["id"]]
    assert await off_loop(delete_webhooks, settings) == []


async def test_whoami_returns_the_bot(fake_webex: FakeWebex, settings: Settings) -> None:
    me = await off_loop(whoami, settings)

    assert isinstance(me, Person)
    assert me.id == fake_webex.bot["id"]
    assert (me.display_name, me.emails, me.type) == ("Helpdesk Bot", ("helpdesk-bot@webex.bot",), "bot")


# ---- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("public_url", None, "PUBLIC_URL"),
        ("webex_access_token", None, "WEBEX_ACCESS_TOKEN"),
        ("webex_access_token", SecretStr(""), "WEBEX_ACCESS_TOKEN"),
        ("webex_webhook_secret", None, "WEBEX_WEBHOOK_SECRET"),
    ],
)
async def test_register_names_the_missing_variable(
    fake_webex: FakeWebex, field: str, value: Any, variable: str
) -> None:
    with pytest.raises(RegistrationError, match=variable) as caught:
        await off_loop(register_webhooks, make_settings(fake_webex, **{field: value}))

    assert "\n" not in str(caught.value)
    assert fake_webex.requests == []


@pytest.mark.parametrize("operation", [list_webhooks, delete_webhooks, whoami])
async def test_other_operations_need_only_the_token(
    fake_webex: FakeWebex, operation: Callable[[Settings], object]
) -> None:
    without_url = make_settings(fake_webex, public_url=None, webex_webhook_secret=None)
    await off_loop(operation, without_url)  # must not raise

    with pytest.raises(RegistrationError, match="WEBEX_ACCESS_TOKEN"):
        await off_loop(operation, make_settings(fake_webex, webex_access_token=None))


@pytest.mark.parametrize("operation", [register_webhooks, list_webhooks, delete_webhooks, whoami])
async def test_bad_token_is_a_401_with_the_tracking_id_and_no_token(
    fake_webex: FakeWebex, operation: Callable[[Settings], object], caplog: pytest.LogCaptureFixture
) -> None:
    bad_token = "revoked-token-0123456789"

    with caplog.at_level(logging.DEBUG), pytest.raises(RegistrationError) as caught:
        await off_loop(operation, make_settings(fake_webex, webex_access_token=SecretStr(bad_token)))

    message = str(caught.value)
    assert "401" in message
    assert "trackingId=ROUTER_" in message
    assert "\n" not in message
    assert bad_token not in message
    assert bad_token not in caplog.text
    assert fake_webex.webhooks == {}


async def test_server_error_reports_status_and_tracking_id(fake_webex: FakeWebex, settings: Settings) -> None:
    fake_webex.fail_next("POST", "/webhooks", status=503)

    with pytest.raises(RegistrationError, match=r"POST /v1/webhooks -> 503: .*trackingId=ROUTER_"):
        await off_loop(register_webhooks, settings)


async def test_unreachable_api_is_a_registration_error(fake_webex: FakeWebex) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = make_settings(fake_webex, webex_api_url=f"http://127.0.0.1:{closed_port}/v1")

    with pytest.raises(RegistrationError, match="could not reach Webex") as caught:
        await off_loop(whoami, settings)

    assert fake_webex.token not in str(caught.value)


# ---- the async watchdog ---------------------------------------------------------------------------


async def test_reactivate_inactive_turns_ours_back_on_and_warns(
    fake_webex: FakeWebex, client: WebexClient, caplog: pytest.LogCaptureFixture
) -> None:
    disabled = fake_webex.add_webhook(
        MESSAGES, TARGET_URL, "messages", "created", secret=SECRET, status="inactive"
    )
    active = fake_webex.add_webhook(ACTIONS, TARGET_URL, "attachmentActions", "created", secret=SECRET)
    foreign = fake_webex.add_webhook(
        "crm-sync", "https://crm.example.com", "messages", "created", status="inactive"
    )

    with caplog.at_level(logging.WARNING, logger="bot.registration"):
        reactivated = await reactivate_inactive(client)

    assert reactivated == [disabled["id"]]
    assert fake_webex.webhooks[disabled["id"]]["status"] == "active"
    assert fake_webex.webhooks[disabled["id"]]["targetUrl"] == TARGET_URL
    assert fake_webex.webhooks[disabled["id"]]["secret"] == SECRET
    assert fake_webex.webhooks[foreign["id"]]["status"] == "inactive"
    assert writes(fake_webex) == [("PUT", f"/webhooks/{disabled['id']}")]
    assert active["id"] not in caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "disabled" in warnings[0].getMessage() and "reactivated" in warnings[0].getMessage()
    assert MESSAGES in warnings[0].getMessage()


async def test_reactivate_inactive_with_nothing_disabled_does_nothing(
    fake_webex: FakeWebex, client: WebexClient
) -> None:
    fake_webex.add_webhook(MESSAGES, TARGET_URL, "messages", "created")

    assert await reactivate_inactive(client) == []
    assert writes(fake_webex) == []


async def test_reactivate_inactive_logs_a_failed_put_and_goes_on(
    fake_webex: FakeWebex, client: WebexClient, caplog: pytest.LogCaptureFixture
) -> None:
    first = fake_webex.add_webhook(MESSAGES, TARGET_URL, "messages", "created", status="inactive")
    second = fake_webex.add_webhook(ACTIONS, TARGET_URL, "attachmentActions", "created", status="inactive")
    fake_webex.fail_next("PUT", f"/webhooks/{first['id']}", status=400)

    with caplog.at_level(logging.ERROR, logger="bot.registration"):
        reactivated = await reactivate_inactive(client)

    assert reactivated == [second["id"]]
    assert fake_webex.webhooks[first["id"]]["status"] == "inactive"
    assert any(r.levelno == logging.ERROR and first["id"] in r.getMessage() for r in caplog.records)


async def _wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not met within 5 seconds")


async def test_watch_webhooks_survives_an_error_and_reactivates_next_round(
    fake_webex: FakeWebex, client: WebexClient, caplog: pytest.LogCaptureFixture
) -> None:
    disabled = fake_webex.add_webhook(MESSAGES, TARGET_URL, "messages", "created", status="inactive")
    fake_webex.fail_next("GET", "/webhooks", status=401)
    stop = asyncio.Event()

    with caplog.at_level(logging.WARNING, logger="bot.registration"):
        task = asyncio.create_task(watch_webhooks(client, interval=0.05, stop=stop))
        await _wait_until(lambda: fake_webex.webhooks[disabled["id"]]["status"] == "active")
        stop.set()
        await asyncio.wait_for(task, timeout=2.0)

    statuses = [r.status for r in fake_webex.requests if r.method == "GET" and r.path == "/webhooks"]
    assert statuses[:2] == [401, 200]
    assert any("watchdog" in r.getMessage() and "401" in r.getMessage() for r in caplog.records)
    assert task.exception() is None


async def test_watch_webhooks_checks_at_once_and_stops_without_waiting_out_the_interval(
    fake_webex: FakeWebex, client: WebexClient
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(watch_webhooks(client, interval=300.0, stop=stop))
    await _wait_until(lambda: any(r.status is not None for r in fake_webex.requests))

    stop.set()
    await asyncio.wait_for(task, timeout=2.0)

    assert [(r.method, r.path) for r in fake_webex.requests] == [("GET", "/webhooks")]


# ---- pure parts: planning and formatting ------------------------------------------------------------


def _webhook(name: str, resource: str = "messages", **fields: Any) -> Webhook:
    values: dict[str, Any] = {
        "id": f"id-{name}-{resource}",
        "name": name,
        "target_url": TARGET_URL,
        "resource": resource,
        "event": "created",
        "secret": SECRET,
        "status": "active",
    }
    values.update(fields)
    return Webhook(**values)


def test_plan_treats_a_missing_secret_as_different() -> None:
    # Without the secret in the listing we cannot know it matches, so it is set again.
    existing = [_webhook(MESSAGES, secret=None), _webhook(ACTIONS, "attachmentActions")]

    plan = plan_registration(existing, target_url=TARGET_URL, secret=SECRET)

    assert [(c.action, c.reasons) for c in plan] == [("updated", ("secret",)), ("unchanged", ())]


def test_plan_does_not_adopt_a_filtered_namesake() -> None:
    existing = [_webhook(MESSAGES, filter="roomId=abc")]

    plan = plan_registration(existing, target_url=TARGET_URL, secret=SECRET)

    assert [(c.action, c.name) for c in plan] == [
        ("created", MESSAGES),
        ("duplicate", MESSAGES),
        ("created", ACTIONS),
    ]
    assert "filter roomId=abc" in plan[1].reasons[0]


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("https://bot.example.com", TARGET_URL),
        ("https://bot.example.com/", TARGET_URL),
        ("https://example.com/helpdesk/", "https://example.com/helpdesk/webhooks/webex"),
    ],
)
def test_target_url_for(public_url: str, expected: str) -> None:
    assert target_url_for(public_url) == expected


def test_format_changes_shows_action_name_id_and_reason() -> None:
    text = format_changes(
        [
            RegistrationChange("created", MESSAGES, "messages", "created", "id-1"),
            RegistrationChange("updated", ACTIONS, "attachmentActions", "created", "id-2", ("secret",)),
        ]
    )

    lines = text.splitlines()
    assert len(lines) == 2
    assert all(part in lines[0] for part in ("created", MESSAGES, "messages/created", "id-1"))
    assert all(part in lines[1] for part in ("updated", ACTIONS, "id-2", "secret"))
    assert format_changes([]) == "nothing to do"


def test_format_webhooks_marks_ours() -> None:
    rows = [
        WebhookRow("id-1", MESSAGES, "messages", "created", TARGET_URL, "inactive", None, True),
        WebhookRow("id-2", "crm-sync", "rooms", "created", "https://crm", "active", "roomId=x", False),
    ]

    lines = format_webhooks(rows).splitlines()

    assert "NAME" in lines[0]
    assert lines[1].startswith("*") and "inactive" in lines[1] and TARGET_URL in lines[1]
    assert not lines[2].startswith("*") and "crm-sync" in lines[2] and "roomId=x" in lines[2]
    assert "no webhooks" in format_webhooks([])
