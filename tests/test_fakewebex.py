"""The fake Webex API answers the way Webex does, so tests built on it mean something."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from bot.models import Message, WebhookEnvelope
from tests import fakewebex
from tests.fakewebex import ADAPTIVE_CARD_TYPE, MAX_MESSAGE_BYTES, FakeWebex, bare_uuid, sign, webex_id

# Bound here so pytest finds the fixture; pytest_plugins would re-import the already imported module.
fake_webex = fakewebex.fake_webex

CARD = {"contentType": ADAPTIVE_CARD_TYPE, "content": {"type": "AdaptiveCard", "version": "1.3", "body": []}}
NO_TOKEN = object()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession,
    fake: FakeWebex,
    method: str,
    path: str,
    *,
    json_body: Any = None,
    token: object = None,
    url: str | None = None,
) -> Reply:
    headers = {}
    if token is not NO_TOKEN:
        headers["Authorization"] = f"Bearer {token or fake.token}"
    async with http.request(method, url or fake.base_url + path, json=json_body, headers=headers) as resp:
        raw = await resp.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode()
        return Reply(resp.status, dict(resp.headers), body)


# ---- auth, errors, tracking ids ----------------------------------------------------------------------


@pytest.mark.parametrize("token", [NO_TOKEN, "wrong-token"])
async def test_requests_without_a_valid_token_get_401(
    http: aiohttp.ClientSession, fake_webex: FakeWebex, token: object
) -> None:
    reply = await call(http, fake_webex, "GET", "/people/me", token=token)

    assert reply.status == 401
    assert reply.body["message"] == (
        "The request requires a valid access token set in the Authorization request header."
    )
    assert reply.body["trackingId"] == reply.headers["TrackingID"]


async def test_people_me_is_the_bot(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    reply = await call(http, fake_webex, "GET", "/people/me")

    assert reply.status == 200
    assert reply.body["id"] == fake_webex.bot["id"]
    assert reply.body["type"] == "bot"
    assert reply.body["emails"] == ["helpdesk-bot@webex.bot"]
    assert reply.body["displayName"] == "Helpdesk Bot"
    assert reply.body["firstName"] == "Helpdesk"


@pytest.mark.parametrize(
    "path", ["/messages/" + webex_id("MESSAGE"), "/people/nobody", "/webhooks/gone", "/no/such/endpoint"]
)
async def test_unknown_ids_get_404_with_errors_and_tracking_id(
    http: aiohttp.ClientSession, fake_webex: FakeWebex, path: str
) -> None:
    reply = await call(http, fake_webex, "GET", path)

    assert reply.status == 404
    assert reply.body["message"]
    assert reply.body["errors"][0]["description"]
    assert reply.body["trackingId"].startswith("ROUTER_")
    assert reply.headers["TrackingID"] == reply.body["trackingId"]


async def test_every_response_has_its_own_tracking_id(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    first = await call(http, fake_webex, "GET", "/people/me")
    second = await call(http, fake_webex, "GET", "/people/me")

    assert first.headers["TrackingID"] != second.headers["TrackingID"]


# ---- ids and signatures ------------------------------------------------------------------------------


def test_ids_look_like_webex_ids_and_decode_to_their_uuid() -> None:
    rest_id = webex_id("MESSAGE", "6f5ebf20-1d2f-11ef-9a4a-9d6a3c1b1c11")

    assert "=" not in rest_id
    assert rest_id.startswith("Y2lzY29zcGFyazovL3VzL01FU1NBR0")
    assert bare_uuid(rest_id) == "6f5ebf20-1d2f-11ef-9a4a-9d6a3c1b1c11"
    assert bare_uuid("6f5ebf20-1d2f-11ef-9a4a-9d6a3c1b1c11") == "6f5ebf20-1d2f-11ef-9a4a-9d6a3c1b1c11"


def test_sign_is_hex_hmac_sha1_of_the_raw_body() -> None:
    # RFC 2202-style known answer, so a wrong digest or encoding cannot agree with itself.
    assert sign(b"The quick brown fox jumps over the lazy dog", "key") == (
        "de7c9b85b8b78aa6bc8a7a36f70a90701c9db4d9"
    )
    body = b'{"id": "x"}'
    assert sign(body, "s3cret") == hmac.new(b"s3cret", body, hashlib.sha1).hexdigest()


# ---- messages ----------------------------------------------------------------------------------------


def test_add_message_lists_mentions_with_rest_ids_even_from_bare_uuids(fake_webex: FakeWebex) -> None:
    room = fake_webex.add_room("group", title="IT")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    html = (
        f'<p><spark-mention data-object-type="person" data-object-id="{bare_uuid(fake_webex.bot["id"])}">'
        f"Helpdesk</spark-mention> error 1000:1002 "
        f'<spark-mention data-object-id="{alice["id"]}" data-object-type="person">Alice</spark-mention></p>'
    )

    message = fake_webex.add_message(room["id"], alice, "Helpdesk error 1000:1002 Alice", html=html)

    assert message["mentionedPeople"] == [fake_webex.bot["id"], alice["id"]]
    assert message["roomType"] == "group"
    assert message["personEmail"] == "alice@example.com"
    assert any(m["personId"] == alice["id"] for m in fake_webex.memberships.values())


async def test_get_message_returns_the_stored_message(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("direct")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    message = fake_webex.add_message(room["id"], alice, "blank screen when I sign in")

    reply = await call(http, fake_webex, "GET", f"/messages/{message['id']}")

    assert reply.status == 200
    assert reply.body == message
    assert Message.model_validate(reply.body).room_type == "direct"


async def test_post_message_stores_it_as_the_bot_in_a_thread(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("group")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    parent = fake_webex.add_message(room["id"], alice, "help")

    reply = await call(
        http,
        fake_webex,
        "POST",
        "/messages",
        json_body={
            "roomId": room["id"],
            "parentId": parent["id"],
            "markdown": "**Try this**",
            "attachments": [CARD],
        },
    )

    assert reply.status == 200
    assert reply.body["personId"] == fake_webex.bot["id"]
    assert reply.body["roomType"] == "group"
    assert reply.body["parentId"] == parent["id"]
    assert fake_webex.messages[reply.body["id"]] == reply.body
    assert fake_webex.posted_messages == [
        {"roomId": room["id"], "parentId": parent["id"], "markdown": "**Try this**", "attachments": [CARD]}
    ]


async def test_post_message_to_a_person_creates_then_reuses_a_direct_room(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    bob = fake_webex.add_person("bob@example.com", "Bob Jones")

    by_id = await call(
        http, fake_webex, "POST", "/messages", json_body={"toPersonId": bob["id"], "text": "hi"}
    )
    by_email = await call(
        http, fake_webex, "POST", "/messages", json_body={"toPersonEmail": "bob@example.com", "text": "again"}
    )

    assert by_id.status == by_email.status == 200
    assert by_id.body["roomType"] == "direct"
    assert by_email.body["roomId"] == by_id.body["roomId"]
    assert fake_webex.rooms[by_id.body["roomId"]]["type"] == "direct"


def _long(n_bytes: int) -> str:
    # Multi-byte characters, so a check that counts characters instead of bytes fails.
    return "é" * (n_bytes // 2) + "x" * (n_bytes % 2)


@pytest.mark.parametrize(
    ("body_of", "fragment"),
    [
        (lambda room, other: {"text": "no destination"}, "Exactly one"),
        (lambda room, other: {"roomId": room, "toPersonId": other, "text": "two"}, "Exactly one"),
        (lambda room, other: {"roomId": room}, "required"),
        (lambda room, other: {"roomId": room, "attachments": [CARD]}, "required"),
        (lambda room, other: {"roomId": room, "text": _long(MAX_MESSAGE_BYTES + 1)}, "7439"),
        (
            lambda room, other: {"roomId": room, "text": "ok", "markdown": _long(MAX_MESSAGE_BYTES + 1)},
            "7439",
        ),
        (
            lambda room, other: {"roomId": room, "text": "two cards", "attachments": [CARD, CARD]},
            "one attachment",
        ),
        (
            lambda room, other: {
                "roomId": room,
                "text": "not a card",
                "attachments": [{"contentType": "application/json", "content": {}}],
            },
            ADAPTIVE_CARD_TYPE,
        ),
        (lambda room, other: {"roomId": room, "text": "reply", "parentId": webex_id("MESSAGE")}, "parentId"),
    ],
)
async def test_post_message_rejects_what_webex_rejects(
    http: aiohttp.ClientSession, fake_webex: FakeWebex, body_of: Any, fragment: str
) -> None:
    room = fake_webex.add_room("group")
    other = fake_webex.add_person("carol@example.com", "Carol")
    stored_before = dict(fake_webex.messages)

    reply = await call(http, fake_webex, "POST", "/messages", json_body=body_of(room["id"], other["id"]))

    assert reply.status == 400
    assert fragment in reply.body["message"]
    assert reply.body["trackingId"] == reply.headers["TrackingID"]
    assert fake_webex.messages == stored_before
    assert fake_webex.posted_messages == []


async def test_post_message_accepts_exactly_the_byte_limit(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("group")
    text = _long(MAX_MESSAGE_BYTES)
    assert len(text.encode()) == MAX_MESSAGE_BYTES

    reply = await call(http, fake_webex, "POST", "/messages", json_body={"roomId": room["id"], "text": text})

    assert reply.status == 200


async def test_post_message_rejects_a_reply_to_a_reply(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("group")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    parent = fake_webex.add_message(room["id"], alice, "help")
    reply_msg = fake_webex.add_message(room["id"], alice, "more", parent_id=parent["id"])

    reply = await call(
        http,
        fake_webex,
        "POST",
        "/messages",
        json_body={"roomId": room["id"], "text": "x", "parentId": reply_msg["id"]},
    )

    assert reply.status == 400


async def test_post_message_to_an_unknown_room_is_404(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    reply = await call(
        http, fake_webex, "POST", "/messages", json_body={"roomId": webex_id("ROOM"), "text": "hello?"}
    )

    assert reply.status == 404


async def test_delete_message_removes_only_the_bots_own(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("group")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    theirs = fake_webex.add_message(room["id"], alice, "mine")
    ours = await call(http, fake_webex, "POST", "/messages", json_body={"roomId": room["id"], "text": "bot"})

    forbidden = await call(http, fake_webex, "DELETE", f"/messages/{theirs['id']}")
    deleted = await call(http, fake_webex, "DELETE", f"/messages/{ours.body['id']}")
    again = await call(http, fake_webex, "GET", f"/messages/{ours.body['id']}")

    assert (forbidden.status, deleted.status, again.status) == (403, 204, 404)


async def test_list_messages_filters_by_thread_newest_first(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    room = fake_webex.add_room("group")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    parent = fake_webex.add_message(room["id"], alice, "help")
    first = fake_webex.add_message(room["id"], alice, "one", parent_id=parent["id"])
    second = fake_webex.add_message(room["id"], alice, "two", parent_id=parent["id"])

    reply = await call(http, fake_webex, "GET", f"/messages?roomId={room['id']}&parentId={parent['id']}")

    assert [m["id"] for m in reply.body["items"]] == [second["id"], first["id"]]


# ---- other resources ---------------------------------------------------------------------------------


async def test_attachment_action_carries_inputs(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    room = fake_webex.add_room("direct")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    card = fake_webex.add_message(room["id"], fake_webex.bot, "card")
    action = fake_webex.add_attachment_action(card["id"], alice, {"verb": "helpful", "thread": card["id"]})

    reply = await call(http, fake_webex, "GET", f"/attachment/actions/{action['id']}")

    assert reply.status == 200
    assert reply.body["inputs"] == {"verb": "helpful", "thread": card["id"]}
    assert reply.body["roomId"] == room["id"]
    assert reply.body["messageId"] == card["id"]


async def test_memberships_filter_by_room_and_person(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    staff_room = fake_webex.add_room("group", title="Helpdesk staff")
    other_room = fake_webex.add_room("group", title="Elsewhere")
    dana = fake_webex.add_person("dana@example.com", "Dana Agent")
    fake_webex.add_membership(staff_room["id"], dana["id"], is_moderator=True)
    fake_webex.add_membership(other_room["id"], dana["id"])

    everyone = await call(http, fake_webex, "GET", f"/memberships?roomId={staff_room['id']}")
    only_dana = await call(
        http, fake_webex, "GET", f"/memberships?roomId={staff_room['id']}&personId={dana['id']}"
    )

    assert {m["personId"] for m in everyone.body["items"]} == {fake_webex.bot["id"], dana["id"]}
    assert [(m["personEmail"], m["isModerator"]) for m in only_dana.body["items"]] == [
        ("dana@example.com", True)
    ]


async def test_get_room(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    room = fake_webex.add_room("group", title="Helpdesk staff")

    reply = await call(http, fake_webex, "GET", f"/rooms/{room['id']}")

    assert reply.body["title"] == "Helpdesk staff"
    assert reply.body["type"] == "group"


# ---- webhooks ----------------------------------------------------------------------------------------


async def test_webhooks_page_through_link_headers(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.page_size = 2
    created = [
        (
            await call(
                http,
                fake_webex,
                "POST",
                "/webhooks",
                json_body={
                    "name": f"hook {i}",
                    "targetUrl": f"https://bot.example.com/{i}",
                    "resource": "messages",
                    "event": "created",
                    "secret": "s",
                },
            )
        ).body["id"]
        for i in range(5)
    ]

    seen: list[str] = []
    link_headers: list[str | None] = []
    url: str | None = fake_webex.base_url + "/webhooks"
    while url is not None:
        async with http.get(url, headers={"Authorization": f"Bearer {fake_webex.token}"}) as resp:
            seen.extend(item["id"] for item in (await resp.json())["items"])
            link_headers.append(resp.headers.get("Link"))
            next_link = resp.links.get("next")
            url = str(next_link["url"]) if next_link else None

    assert seen == created
    assert len(link_headers) == 3
    assert all(h is not None and h.endswith('>; rel="next"') for h in link_headers[:2])
    assert link_headers[2] is None


async def test_webhook_can_be_reenabled_with_put(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    hook = fake_webex.add_webhook(
        "bot", "https://bot.example.com/hook", "messages", "created", status="inactive"
    )

    missing = await call(http, fake_webex, "PUT", f"/webhooks/{hook['id']}", json_body={"name": "bot"})
    reply = await call(
        http,
        fake_webex,
        "PUT",
        f"/webhooks/{hook['id']}",
        json_body={"name": "bot", "targetUrl": "https://bot.example.com/hook", "status": "active"},
    )

    assert missing.status == 400
    assert reply.status == 200
    assert fake_webex.webhooks[hook["id"]]["status"] == "active"


async def test_delete_webhook(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    hook = fake_webex.add_webhook("bot", "https://bot.example.com/hook", "messages", "created")

    deleted = await call(http, fake_webex, "DELETE", f"/webhooks/{hook['id']}")
    again = await call(http, fake_webex, "GET", f"/webhooks/{hook['id']}")

    assert (deleted.status, again.status) == (204, 404)


def test_envelopes_match_what_webex_posts_and_carry_no_text(fake_webex: FakeWebex) -> None:
    hook = fake_webex.add_webhook("bot", "https://bot.example.com/hook", "all", "all", secret="s")
    room = fake_webex.add_room("group")
    alice = fake_webex.add_person("alice@example.com", "Alice Smith")
    message = fake_webex.add_message(room["id"], alice, "secret text")
    action = fake_webex.add_attachment_action(message["id"], alice, {"verb": "claim"})

    raw = fake_webex.message_created_envelope(message)
    envelope = WebhookEnvelope.model_validate(raw)
    action_envelope = WebhookEnvelope.model_validate(fake_webex.action_created_envelope(action))

    assert set(raw) >= {
        "id",
        "name",
        "targetUrl",
        "resource",
        "event",
        "orgId",
        "createdBy",
        "appId",
        "ownedBy",
        "status",
        "created",
        "actorId",
        "data",
    }
    assert "text" not in raw["data"]
    assert envelope.id == hook["id"]
    assert envelope.actor_id == alice["id"]
    assert envelope.message_data().id == message["id"]
    assert "inputs" not in action_envelope.data
    assert action_envelope.action_data().message_id == message["id"]


# ---- fault injection ---------------------------------------------------------------------------------


async def test_faults_are_consumed_in_order_and_recorded(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    fake_webex.fail_next("GET", "/people", status=429, retry_after="7")
    fake_webex.fail_next("GET", "/people", status=503, times=2)

    statuses = [(await call(http, fake_webex, "GET", "/people/me")) for _ in range(4)]

    assert [r.status for r in statuses] == [429, 503, 503, 200]
    assert statuses[0].headers["Retry-After"] == "7"
    assert statuses[1].body["trackingId"] == statuses[1].headers["TrackingID"]
    assert [r.status for r in fake_webex.requests] == [429, 503, 503, 200]


async def test_faults_only_hit_matching_method_and_path(
    http: aiohttp.ClientSession, fake_webex: FakeWebex
) -> None:
    fake_webex.fail_next("POST", "/messages", status=500)

    room = fake_webex.add_room("group")

    unaffected = await call(http, fake_webex, "GET", "/people/me")
    other_path = await call(http, fake_webex, "GET", f"/messages?roomId={room['id']}")
    hit = await call(http, fake_webex, "POST", "/messages", json_body={"roomId": room["id"], "text": "x"})

    assert (unaffected.status, other_path.status, hit.status) == (200, 200, 500)


async def test_fault_with_custom_body(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.fail_next("GET", "/people", status=502, body="<html>bad gateway</html>")

    reply = await call(http, fake_webex, "GET", "/people/me")

    assert (reply.status, reply.body) == (502, "<html>bad gateway</html>")


async def test_invalid_json_next(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.invalid_json_next("GET", "/people/me")

    async with http.get(
        fake_webex.base_url + "/people/me", headers={"Authorization": f"Bearer {fake_webex.token}"}
    ) as resp:
        raw = await resp.read()

    assert resp.status == 200
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads(raw)


async def test_reset_next_cuts_the_connection(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.reset_next("POST", "/messages")
    room = fake_webex.add_room("group")

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, fake_webex, "POST", "/messages", json_body={"roomId": room["id"], "text": "x"})

    assert [(r.method, r.status) for r in fake_webex.requests] == [("POST", None)]
    assert fake_webex.messages == {}


async def test_delay_stalls_until_cleared(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.delay("GET", "/people", 5.0)
    timeout = aiohttp.ClientTimeout(total=0.3)

    for _ in range(2):
        with pytest.raises(TimeoutError):
            async with http.get(
                fake_webex.base_url + "/people/me",
                headers={"Authorization": f"Bearer {fake_webex.token}"},
                timeout=timeout,
            ):
                pass
    fake_webex.clear_faults()
    reply = await call(http, fake_webex, "GET", "/people/me")

    assert reply.status == 200


async def test_delay_with_times_expires(http: aiohttp.ClientSession, fake_webex: FakeWebex) -> None:
    fake_webex.delay("GET", "/people", 5.0, times=1)
    timeout = aiohttp.ClientTimeout(total=0.3)

    with pytest.raises(TimeoutError):
        async with http.get(
            fake_webex.base_url + "/people/me",
            headers={"Authorization": f"Bearer {fake_webex.token}"},
            timeout=timeout,
        ):
            pass
    async with http.get(
        fake_webex.base_url + "/people/me",
        headers={"Authorization": f"Bearer {fake_webex.token}"},
        timeout=timeout,
    ) as resp:
        assert resp.status == 200
