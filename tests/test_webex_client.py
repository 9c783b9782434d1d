"""WebexClient against the fake Webex API over real HTTP: parsing, retries, 429 handling and typed errors."""

from __future__ import annotations

import logging
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pydantic
import pytest
import pytest_asyncio

from bot.models import AttachmentAction, Membership, Message, Person, Webhook, WebhookEnvelope
from bot.webex import (
    WebexAuthError,
    WebexBadRequest,
    WebexBadResponse,
    WebexClient,
    WebexError,
    WebexMaybePosted,
    WebexNotFound,
    WebexRateLimited,
    WebexUnavailable,
    parse_retry_after,
)
from tests import fakewebex
from tests.fakewebex import ADAPTIVE_CARD_TYPE, MAX_MESSAGE_BYTES, FakeWebex, webex_id

# Bound here so pytest finds the fixture; pytest_plugins would re-import the already imported module.
fake_webex = fakewebex.fake_webex

CARD = {"contentType": ADAPTIVE_CARD_TYPE, "content": {"type": "AdaptiveCard", "version": "1.3", "body": []}}


class UpperBoundRandom(random.Random):
    """Always picks the top of the jitter window, so the backoff caps become exact, checkable numbers."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Harness:
    fake: FakeWebex
    session: aiohttp.ClientSession
    sleeps: list[float] = field(default_factory=list)
    responses: list[tuple[str, str, int | str]] = field(default_factory=list)

    async def record_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def record_response(self, method: str, label: str, status: int | str) -> None:
        self.responses.append((method, label, status))

    def client(self, **overrides: Any) -> WebexClient:
        options: dict[str, Any] = {
            "sleep": self.record_sleep,
            "on_response": self.record_response,
            "max_attempts": 5,
            "rng": random.Random(1234),
        }
        options.update(overrides)
        base_url = options.pop("base_url", self.fake.base_url)
        token = options.pop("token", self.fake.token)
        return WebexClient(self.session, base_url, token, **options)

    @property
    def statuses(self) -> list[int | str]:
        return [status for _, _, status in self.responses]


@pytest_asyncio.fixture
async def harness(fake_webex: FakeWebex) -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        yield Harness(fake_webex, session)


@pytest.fixture
def room(fake_webex: FakeWebex) -> dict[str, Any]:
    return fake_webex.add_room("group", title="IT help")


@pytest.fixture
def alice(fake_webex: FakeWebex) -> dict[str, Any]:
    return fake_webex.add_person("alice@example.com", "Alice Smith")


# ---- happy paths -------------------------------------------------------------------------------------


async def test_get_me_returns_the_bot_and_sends_the_bearer_token(harness: Harness) -> None:
    me = await harness.client().get_me()

    assert isinstance(me, Person)
    assert me.id == harness.fake.bot["id"]
    assert me.type == "bot"
    assert me.display_name == "Helpdesk Bot"
    assert me.first_name == "Helpdesk"
    assert me.emails == ("helpdesk-bot@webex.bot",)
    assert harness.fake.requests[0].headers["Authorization"] == f"Bearer {harness.fake.token}"


async def test_get_person(harness: Harness, alice: dict[str, Any]) -> None:
    person = await harness.client().get_person(alice["id"])

    assert (person.id, person.emails, person.last_name) == (alice["id"], ("alice@example.com",), "Smith")


async def test_get_message_parses_mentions_and_timestamps(
    harness: Harness, room: dict[str, Any], alice: dict[str, Any]
) -> None:
    bot_id = harness.fake.bot["id"]
    html = (
        f'<spark-mention data-object-type="person" data-object-id="{bot_id}">Helpdesk</spark-mention>'
        " 1000:1002"
    )
    stored = harness.fake.add_message(room["id"], alice, "Helpdesk 1000:1002", html=html)

    message = await harness.client().get_message(stored["id"])

    assert isinstance(message, Message)
    assert message.text == "Helpdesk 1000:1002"
    assert message.room_type == "group"
    assert message.person_email == "alice@example.com"
    assert message.mentioned_people == (bot_id,)
    assert message.created is not None
    assert message.created.tzinfo is not None


async def test_post_message_threads_under_the_parent(
    harness: Harness, room: dict[str, Any], alice: dict[str, Any]
) -> None:
    parent = harness.fake.add_message(room["id"], alice, "blank screen when I sign in")

    posted = await harness.client().post_message(
        {
            "roomId": room["id"],
            "parentId": parent["id"],
            "markdown": "**Try this**",
            "text": "Try this",
            "attachments": [CARD],
        }
    )

    assert posted.parent_id == parent["id"]
    assert posted.person_id == harness.fake.bot["id"]
    assert posted.attachments == (CARD,)
    assert harness.fake.posted_messages == [
        {
            "roomId": room["id"],
            "parentId": parent["id"],
            "text": "Try this",
            "markdown": "**Try this**",
            "attachments": [CARD],
        }
    ]


async def test_post_message_to_a_person_by_email(harness: Harness, alice: dict[str, Any]) -> None:
    posted = await harness.client().post_message({"toPersonEmail": "alice@example.com", "text": "hi"})

    assert posted.room_type == "direct"
    assert harness.fake.posted_messages == [{"toPersonEmail": "alice@example.com", "text": "hi"}]


@pytest.mark.parametrize(
    "body",
    [
        {"roomId": "r"},
        {"roomId": "r", "text": ""},
        {"text": "nowhere"},
        {"roomId": "r", "toPersonId": "p", "text": "two places"},
    ],
)
async def test_post_message_refuses_incomplete_bodies_without_a_request(
    harness: Harness, body: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="a message needs"):
        await harness.client().post_message(body)

    assert harness.fake.requests == []


async def test_get_attachment_action(harness: Harness, room: dict[str, Any], alice: dict[str, Any]) -> None:
    card = harness.fake.add_message(room["id"], harness.fake.bot, "card")
    stored = harness.fake.add_attachment_action(card["id"], alice, {"verb": "claim", "ticket": "T-1"})

    action = await harness.client().get_attachment_action(stored["id"])

    assert isinstance(action, AttachmentAction)
    assert action.inputs == {"verb": "claim", "ticket": "T-1"}
    assert (action.message_id, action.person_id, action.room_id) == (card["id"], alice["id"], room["id"])


async def test_memberships_and_is_member(
    harness: Harness, room: dict[str, Any], alice: dict[str, Any]
) -> None:
    outsider = harness.fake.add_person("mallory@example.com", "Mallory")
    harness.fake.add_membership(room["id"], alice["id"], is_moderator=True)
    client = harness.client()

    memberships = await client.list_memberships(room_id=room["id"])

    assert all(isinstance(m, Membership) for m in memberships)
    assert {m.person_id for m in memberships} == {harness.fake.bot["id"], alice["id"]}
    assert await client.is_member(room["id"], alice["id"]) is True
    assert await client.is_member(room["id"], outsider["id"]) is False
    assert harness.fake.requests[-1].query == {"roomId": room["id"], "personId": outsider["id"]}


async def test_list_webhooks_follows_next_links(harness: Harness) -> None:
    harness.fake.page_size = 2
    created = [
        harness.fake.add_webhook(
            f"hook {i}", f"https://bot.example.com/{i}", "messages", "created", secret="s"
        )
        for i in range(5)
    ]

    webhooks = await harness.client().list_webhooks()

    assert [w.id for w in webhooks] == [w["id"] for w in created]
    assert all(isinstance(w, Webhook) and w.secret == "s" for w in webhooks)
    assert [r.path for r in harness.fake.requests] == ["/webhooks"] * 3
    assert harness.responses == [("GET", "/webhooks", 200)] * 3


async def test_update_webhook_reenables_a_disabled_webhook(harness: Harness) -> None:
    hook = harness.fake.add_webhook("bot", "https://old.example.com", "all", "all", status="inactive")

    updated = await harness.client().update_webhook(
        hook["id"], name="bot", target_url="https://bot.example.com/hook", secret="n3w", status="active"
    )

    assert (updated.status, updated.target_url, updated.secret) == (
        "active",
        "https://bot.example.com/hook",
        "n3w",
    )
    assert harness.fake.requests[-1].json == {
        "name": "bot",
        "targetUrl": "https://bot.example.com/hook",
        "secret": "n3w",
        "status": "active",
    }


async def test_ids_are_quoted_into_a_single_path_segment(
    harness: Harness, room: dict[str, Any], alice: dict[str, Any]
) -> None:
    stored = harness.fake.add_message(room["id"], alice, "odd id")
    odd_id = "odd id/../webhooks?max=1#x"
    harness.fake.messages[odd_id] = {**stored, "id": odd_id}

    message = await harness.client().get_message(odd_id)

    assert message.id == odd_id
    assert harness.fake.requests[0].query == {}


async def test_on_response_gets_path_templates_not_ids(
    harness: Harness, room: dict[str, Any], alice: dict[str, Any]
) -> None:
    stored = harness.fake.add_message(room["id"], alice, "hello")
    action = harness.fake.add_attachment_action(stored["id"], alice, {})
    hook = harness.fake.add_webhook("bot", "https://bot.example.com/hook", "all", "all")
    client = harness.client()

    await client.get_me()
    await client.get_person(alice["id"])
    await client.get_message(stored["id"])
    await client.post_message({"roomId": room["id"], "text": "hi"})
    await client.get_attachment_action(action["id"])
    await client.list_memberships(room_id=room["id"])
    await client.update_webhook(hook["id"], name="bot", target_url="https://bot.example.com/hook")
    with pytest.raises(WebexNotFound):
        await client.get_message(webex_id("MESSAGE"))

    assert harness.responses == [
        ("GET", "/people/me", 200),
        ("GET", "/people/{id}", 200),
        ("GET", "/messages/{id}", 200),
        ("POST", "/messages", 200),
        ("GET", "/attachment/actions/{id}", 200),
        ("GET", "/memberships", 200),
        ("PUT", "/webhooks/{id}", 200),
        ("GET", "/messages/{id}", 404),
    ]


# ---- fail fast ---------------------------------------------------------------------------------------


async def test_404_raises_not_found_with_the_tracking_id(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    missing = webex_id("MESSAGE")

    with caplog.at_level(logging.WARNING, logger="bot.webex"), pytest.raises(WebexNotFound) as caught:
        await harness.client().get_message(missing)

    error = caught.value
    assert error.status == 404
    assert error.tracking_id is not None
    assert error.tracking_id.startswith("ROUTER_")
    assert (error.method, error.path) == ("GET", f"/messages/{missing}")
    assert "\n" not in str(error)
    for part in ("GET", f"/messages/{missing}", "404", error.tracking_id):
        assert part in str(error)
    assert error.tracking_id in caplog.text
    assert harness.sleeps == []
    assert len(harness.fake.requests) == 1


async def test_401_raises_auth_error_without_retrying(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(WebexAuthError) as caught:
        await harness.client(token="revoked-token").get_me()

    assert caught.value.status == 401
    assert caught.value.tracking_id is not None
    assert harness.statuses == [401]
    assert harness.sleeps == []
    assert "revoked-token" not in caplog.text


async def test_403_is_an_auth_error(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=403)

    with pytest.raises(WebexAuthError):
        await harness.client().get_me()

    assert harness.statuses == [403]


async def test_oversized_post_fails_fast_with_400(harness: Harness, room: dict[str, Any]) -> None:
    with pytest.raises(WebexBadRequest) as caught:
        await harness.client().post_message({"roomId": room["id"], "markdown": "x" * (MAX_MESSAGE_BYTES + 1)})

    assert caught.value.status == 400
    assert "7439" in str(caught.value)
    assert harness.statuses == [400]
    assert harness.sleeps == []
    assert harness.fake.messages == {}


async def test_invalid_json_raises_bad_response_without_retrying(harness: Harness) -> None:
    harness.fake.invalid_json_next("GET", "/people/me")

    with pytest.raises(WebexBadResponse) as caught:
        await harness.client().get_me()

    assert caught.value.status == 200
    assert caught.value.tracking_id is not None
    assert harness.statuses == [200]
    assert len(harness.fake.requests) == 1


async def test_body_that_does_not_fit_the_model_raises_bad_response(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=200, body='{"id": "", "displayName": "nobody"}')

    with pytest.raises(WebexBadResponse, match="Person") as caught:
        await harness.client().get_me()

    assert caught.value.tracking_id is not None
    assert harness.statuses == [200]


async def test_list_without_items_raises_bad_response(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/webhooks", status=200, body='{"webhooks": []}')

    with pytest.raises(WebexBadResponse, match="items"):
        await harness.client().list_webhooks()


# ---- 429 ---------------------------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=429, retry_after="2")

    me = await harness.client().get_me()

    assert me.id == harness.fake.bot["id"]
    assert harness.sleeps == [2.0]
    assert harness.statuses == [429, 200]


async def test_429_with_fractional_retry_after(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=429, retry_after="0.25")

    await harness.client().get_me()

    assert harness.sleeps == [0.25]


@pytest.mark.parametrize("retry_after", ["soon", "-3", "NaN", "inf", "", "1e999", "Wed, 99 Foo 2024"])
async def test_429_with_malformed_retry_after_uses_the_default(harness: Harness, retry_after: str) -> None:
    harness.fake.fail_next("GET", "/people/me", status=429, retry_after=retry_after)

    await harness.client(retry_after_default=1.5).get_me()

    assert harness.sleeps == [1.5]


async def test_429_without_retry_after_uses_the_default(harness: Harness) -> None:
    harness.fake.fail_next("POST", "/messages", status=429)
    room = harness.fake.add_room("group")

    await harness.client(retry_after_default=3.0).post_message({"roomId": room["id"], "text": "hi"})

    assert harness.sleeps == [3.0]
    assert len(harness.fake.posted_messages) == 1


async def test_429_with_an_absurd_retry_after_is_capped(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=429, retry_after="86400")

    await harness.client(retry_after_max=45.0).get_me()

    assert harness.sleeps == [45.0]


async def test_429_every_time_raises_rate_limited_after_max_attempts(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=429, retry_after="1", times=10)

    with pytest.raises(WebexRateLimited) as caught:
        await harness.client(max_attempts=3).get_me()

    assert caught.value.status == 429
    assert harness.statuses == [429, 429, 429]
    assert harness.sleeps == [1.0, 1.0]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, 5.0),
        ("2", 2.0),
        ("0", 0.0),
        (" 7 ", 7.0),
        ("2.5", 2.5),
        ("120", 60.0),
        ("soon", 5.0),
        ("-3", 5.0),
        ("NaN", 5.0),
        ("-inf", 5.0),
    ],
)
def test_parse_retry_after(header: str | None, expected: float) -> None:
    assert parse_retry_after(header, default=5.0, maximum=60.0) == expected


def test_parse_retry_after_accepts_an_http_date() -> None:
    in_ten_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)

    assert 8.0 <= parse_retry_after(in_ten_seconds, default=5.0, maximum=60.0) <= 10.0


def test_parse_retry_after_caps_the_default_too() -> None:
    assert parse_retry_after(None, default=90.0, maximum=60.0) == 60.0


# ---- 5xx, transport failures -------------------------------------------------------------------------


async def test_503_twice_then_success_backs_off_within_bounds(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=503, times=2)

    me = await harness.client(backoff_base=0.5).get_me()

    assert me.type == "bot"
    assert harness.statuses == [503, 503, 200]
    assert len(harness.sleeps) == 2
    assert 0.0 <= harness.sleeps[0] <= 0.5
    assert 0.0 <= harness.sleeps[1] <= 1.0


async def test_backoff_doubles_and_is_capped_by_backoff_max(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=502, times=5)

    await harness.client(max_attempts=6, backoff_base=1.0, backoff_max=3.0, rng=UpperBoundRandom()).get_me()

    assert harness.sleeps == [1.0, 2.0, 3.0, 3.0, 3.0]


async def test_backoff_is_jittered(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=500, times=4)

    await harness.client(backoff_base=10.0, backoff_max=10.0, rng=random.Random(7)).get_me()

    assert len(set(harness.sleeps)) == 4
    assert all(0.0 <= s <= 10.0 for s in harness.sleeps)


async def test_503_with_retry_after_waits_as_told(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=503, retry_after="4")

    await harness.client().get_me()

    assert harness.sleeps == [4.0]


async def test_exhausted_retries_raise_unavailable_after_max_attempts(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/messages", status=503, times=10)

    with pytest.raises(WebexUnavailable) as caught:
        await harness.client(max_attempts=3).get_message(webex_id("MESSAGE"))

    assert caught.value.status == 503
    assert caught.value.tracking_id is not None
    assert caught.value.tracking_id in str(caught.value)
    assert harness.statuses == [503, 503, 503]
    assert len(harness.fake.requests) == 3
    assert len(harness.sleeps) == 2


async def test_501_is_not_retried(harness: Harness) -> None:
    harness.fake.fail_next("GET", "/people/me", status=501)

    with pytest.raises(WebexUnavailable):
        await harness.client().get_me()

    assert harness.statuses == [501]


async def test_post_is_not_blindly_retried_after_a_connection_reset(
    harness: Harness, room: dict[str, Any]
) -> None:
    # The request may have been stored before the connection died: retrying here could post twice, so the
    # caller is told and checks the room first (see bot.context.post_reply).
    harness.fake.reset_next("POST", "/messages")

    with pytest.raises(WebexMaybePosted) as info:
        await harness.client().post_message({"roomId": room["id"], "text": "hello"})

    assert "may have taken effect" in str(info.value)
    assert harness.statuses == ["error"]
    assert harness.sleeps == []
    assert [r.status for r in harness.fake.requests] == [None]


async def test_get_is_retried_after_repeated_connection_resets(harness: Harness) -> None:
    # aiohttp itself resends an idempotent request once, so two resets are one failure for the client.
    harness.fake.reset_next("GET", "/people/me", times=2)

    me = await harness.client().get_me()

    assert me.type == "bot"
    assert harness.statuses == ["error", 200]
    assert [r.status for r in harness.fake.requests] == [None, None, 200]


async def test_timeouts_are_retried(harness: Harness) -> None:
    harness.fake.delay("GET", "/people/me", 2.0, times=1)

    me = await harness.client(timeout=0.2).get_me()

    assert me.type == "bot"
    assert harness.statuses == ["timeout", 200]
    assert len(harness.sleeps) == 1


async def test_unreachable_server_raises_unavailable(harness: Harness) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    with pytest.raises(WebexUnavailable) as caught:
        await harness.client(base_url=f"http://127.0.0.1:{closed_port}/v1", max_attempts=3).get_me()

    assert caught.value.status is None
    assert "no response" in str(caught.value)
    assert harness.statuses == ["error", "error", "error"]
    assert len(harness.sleeps) == 2


# ---- errors and models -------------------------------------------------------------------------------


def test_error_str_is_one_line_with_everything_support_needs() -> None:
    error = WebexError(
        "Bad\nthing\n happened", method="POST", path="/messages", status=400, tracking_id="ROUTER_1"
    )

    assert str(error) == "Webex POST /messages -> 400: Bad thing happened (trackingId=ROUTER_1)"


def test_client_repr_does_not_leak_the_token() -> None:
    session: Any = object()  # never used: the constructor does no I/O

    client = WebexClient(session, "https://webexapis.com/v1", "very-secret-token")

    assert "very-secret-token" not in repr(client)


def test_client_rejects_zero_attempts() -> None:
    session: Any = object()

    with pytest.raises(ValueError, match="max_attempts"):
        WebexClient(session, "https://webexapis.com/v1", "t", max_attempts=0)


def _envelope(**overrides: Any) -> dict[str, Any]:
    data = {"id": "m1", "roomId": "r1", "roomType": "group", "personId": "p1", "personEmail": "a@example.com"}
    envelope = {"id": "w1", "resource": "messages", "event": "created", "data": data}
    envelope.update(overrides)
    return envelope


def test_envelope_requires_a_data_id() -> None:
    with pytest.raises(pydantic.ValidationError, match="non-empty string 'id'"):
        WebhookEnvelope.model_validate(_envelope(data={"id": ""}))
    with pytest.raises(pydantic.ValidationError):
        WebhookEnvelope.model_validate(_envelope(data={"roomId": "r1"}))


def test_envelope_data_helpers_check_the_resource() -> None:
    envelope = WebhookEnvelope.model_validate(_envelope())

    assert envelope.message_data().person_email == "a@example.com"
    with pytest.raises(ValueError, match="attachmentActions"):
        envelope.action_data()


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (Person, {"id": ""}),
        (Message, {"id": "m", "roomId": "", "roomType": "group", "personId": "p"}),
        (Membership, {"id": "x", "roomId": "r"}),
    ],
)
def test_models_reject_missing_or_empty_ids(model: type[pydantic.BaseModel], payload: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        model.model_validate(payload)


def test_models_are_frozen_and_accept_snake_case() -> None:
    person = Person(id="p1", display_name="Alice")

    with pytest.raises(pydantic.ValidationError):
        person.display_name = "Mallory"  # type: ignore[misc]
    assert person.model_dump(by_alias=True)["displayName"] == "Alice"
