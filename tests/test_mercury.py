"""Sans-I/O: REST ids, the frame translator, the catalog, and which proxy a socket URL gets."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from bot.devices import Device, parse_catalog
from bot.hydra import cluster_of, dedupe_key, parse_rest_id, rest_id
from bot.mercury import MAX_HELD_SHARES, Translator
from bot.models import WebhookEnvelope
from bot.websocket import proxy_for
from tests.fakewebex import webex_id
from tests.fakewebsocket import FakeCloud, SocketWebex
from tests.procs import serve_env

ME = str(uuid.uuid4())
ALICE = str(uuid.uuid4())
ROOM = str(uuid.uuid4())


def frame(activity: dict[str, Any], seq: int | None = None, envelope_id: str | None = None) -> str:
    body: dict[str, Any] = {
        "id": envelope_id or str(uuid.uuid4()),
        "data": {"eventType": "conversation.activity", "activity": activity},
    }
    if seq is not None:
        body["sequenceNumber"] = seq
    return json.dumps(body)


def activity(verb: str = "post", *, actor: str = ALICE, direct: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "verb": verb,
        "published": "2026-11-30T10:00:00.000Z",
        "actor": {"entryUUID": actor, "emailAddress": "alice@example.com", "type": "PERSON"},
        "object": {"objectType": "comment"},
        "target": {
            "id": ROOM,
            "url": f"https://conv-a.wbx2.com/conversation/api/v1/conversations/{ROOM}",
            "tags": ["ONE_ON_ONE"] if direct else [],
        },
        **extra,
    }


# ---- REST ids --------------------------------------------------------------------------------------------


def test_rest_ids_round_trip_and_match_what_webex_mints() -> None:
    raw = str(uuid.uuid4())
    assert rest_id("MESSAGE", raw) == webex_id("MESSAGE", raw)
    assert parse_rest_id(rest_id("ATTACHMENT_ACTION", raw)) == ("us", "ATTACHMENT_ACTION", raw)
    eu = rest_id("MESSAGE", raw, "urn:TEAM:eu-central-1_k")
    assert parse_rest_id(eu) == ("urn:TEAM:eu-central-1_k", "MESSAGE", raw)
    assert parse_rest_id("not-an-id") is None and parse_rest_id("msg-1") is None


@pytest.mark.parametrize("kind", ["MESSAGE", "ATTACHMENT_ACTION", "PEOPLE"])
def test_the_dedupe_key_is_one_spelling_per_id(kind: str) -> None:
    raw = str(uuid.uuid4())
    minted = webex_id(kind, raw)
    padded = base64.b64encode(f"ciscospark://us/{kind}/{raw}".encode()).decode()
    assert dedupe_key(minted) == minted  # keys stored before this change still match
    assert dedupe_key(padded) == minted
    assert dedupe_key(webex_id(kind, raw.upper())) == minted
    assert dedupe_key("local-123") == "local-123"


def test_clusters_follow_the_js_sdk_rule() -> None:
    assert cluster_of("urn:TEAM:us-east-2_a:conversation") == "us"
    assert cluster_of("urn:TEAM:eu-central-1_k:conversation") == "urn:TEAM:eu-central-1_k"


# ---- frames ----------------------------------------------------------------------------------------------


def test_a_post_becomes_the_webhook_event_with_the_rest_ids() -> None:
    t = Translator(me_uuid=ME)
    post = activity()
    out = t.on_frame(frame(post, envelope_id="env-1"))
    assert out.kind == "event" and out.acks == ("env-1",)
    [item] = out.events
    assert item.event_id == webex_id("MESSAGE", post["id"]) and item.resource == "messages"
    envelope = WebhookEnvelope.model_validate_json(item.payload)
    data = envelope.message_data()
    assert data.room_id == webex_id("ROOM", ROOM) and data.room_type == "direct"
    assert data.person_id == webex_id("PEOPLE", ALICE) and data.person_email == "alice@example.com"


def test_a_card_action_becomes_an_attachment_action_event() -> None:
    card = str(uuid.uuid4())
    submit = activity("cardAction", direct=False, parent={"id": card, "type": "cardAction"})
    [item] = Translator(me_uuid=ME).on_frame(frame(submit)).events
    data = WebhookEnvelope.model_validate_json(item.payload).action_data()
    assert item.event_id == data.id == webex_id("ATTACHMENT_ACTION", submit["id"])
    assert data.message_id == webex_id("MESSAGE", card)


def test_the_catalog_cluster_goes_into_the_ids() -> None:
    t = Translator(me_uuid=ME, clusters={"conv-a.wbx2.com": "urn:TEAM:eu-central-1_k"})
    post = activity()
    [item] = t.on_frame(frame(post)).events
    assert parse_rest_id(item.event_id) == ("urn:TEAM:eu-central-1_k", "MESSAGE", post["id"])


def test_own_other_bots_and_unmentioned_group_activities_are_acked_and_dropped() -> None:
    t = Translator(me_uuid=ME)
    assert t.on_frame(frame(activity(actor=ME))).reason == "self"
    robot = activity()
    robot["actor"]["emailAddress"] = "other@webex.bot"
    assert t.on_frame(frame(robot)).reason == "bot"
    others = activity(direct=False)
    others["object"]["mentions"] = {"items": [{"id": str(uuid.uuid4()), "objectType": "person"}]}
    out = t.on_frame(frame(others, envelope_id="e"))
    assert out.kind == "ignored" and out.reason == "not-mentioned" and out.acks == ("e",)
    mine = activity(direct=False)
    mine["object"]["mentions"] = {"items": [{"id": ME, "objectType": "person"}]}
    assert t.on_frame(frame(mine)).kind == "event"
    assert t.on_frame(frame(activity("delete"))).reason == "verb-delete"


def test_control_frames_malformed_frames_and_sequence_gaps() -> None:
    t = Translator()
    opened = json.dumps({"id": "b", "data": {"eventType": "mercury.buffer_state"}})
    assert t.on_frame(opened).kind == "open"
    assert t.on_frame(json.dumps({"id": "p1", "type": "pong"})).pong_id == "p1"
    assert t.on_frame("{nope").kind == "malformed"
    broken = t.on_frame(
        json.dumps({"id": "x", "data": {"eventType": "conversation.activity", "activity": {}}})
    )
    assert broken.kind == "malformed" and broken.acks == ("x",)  # acked, or it would come back for ever
    assert not t.on_frame(frame(activity(), seq=1)).gap
    assert not t.on_frame(frame(activity(), seq=2)).gap
    assert t.on_frame(frame(activity(), seq=4)).gap
    t.new_connection()
    assert not t.on_frame(frame(activity(), seq=1)).gap


def test_a_share_waits_for_the_update_that_says_its_files_are_safe() -> None:
    t = Translator(me_uuid=ME)
    files = {"items": [{"malwareQuarantineState": "unchecked"}]}
    share = activity("share", object={"objectType": "content", "files": files})
    held = t.on_frame(frame(share, envelope_id="share"))
    assert held.kind == "held" and held.acks == () and t.held_shares == 1
    still = {"items": [{"malwareQuarantineState": "unchecked"}]}
    waiting = activity("update", object={"id": share["id"], "objectType": "content", "files": still})
    assert t.on_frame(frame(waiting, envelope_id="u1")).acks == ("u1",) and t.held_shares == 1
    safe = {"items": [{"malwareQuarantineState": "safe"}]}
    update = activity("update", object={"id": share["id"], "objectType": "content", "files": safe})
    out = t.on_frame(frame(update, envelope_id="u2"))
    assert out.kind == "event" and out.acks == ("share", "u2")
    assert out.events[0].event_id == webex_id("MESSAGE", share["id"])
    already_safe = activity("share", object={"objectType": "content", "files": safe})
    assert t.on_frame(frame(already_safe)).kind == "event"


def test_held_shares_are_bounded() -> None:
    t = Translator(me_uuid=ME)
    files = {"items": [{"malwareQuarantineState": "unchecked"}]}
    acks: list[str] = []
    for n in range(MAX_HELD_SHARES + 3):
        acks += t.on_frame(frame(activity("share", object={"files": files}), envelope_id=f"s{n}")).acks
    assert t.held_shares == MAX_HELD_SHARES and acks == ["s0", "s1", "s2"]


# ---- catalog, devices, proxies ---------------------------------------------------------------------------


def test_the_catalog_gives_the_device_service_and_the_clusters() -> None:
    catalog = parse_catalog(
        {
            "serviceLinks": {"wdm": "https://wdm-a.wbx2.com/wdm/api/v1"},
            "hostCatalog": {
                "conv-k.wbx2.com": [{"host": "conv-k.wbx2.com", "id": "urn:TEAM:eu-central-1_k:conversation"}]
            },
        }
    )
    assert catalog.wdm == "https://wdm-a.wbx2.com/wdm/api/v1"
    assert catalog.clusters == {"conv-k.wbx2.com": "urn:TEAM:eu-central-1_k"}


def test_only_our_devices_that_nobody_refreshed_are_stale() -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=2)

    def device(name: str, model: str, when: datetime) -> Device:
        return Device.model_validate({"url": "u", "name": name, "model": model, "modificationTime": when})

    assert device("helpdesk-bot@gone", "helpdesk-bot", old).stale(now, "helpdesk-bot@me")
    assert not device("helpdesk-bot@me", "helpdesk-bot", old).stale(now, "helpdesk-bot@me")
    assert not device("helpdesk-bot@live", "helpdesk-bot", now).stale(now, "helpdesk-bot@me")
    assert not device("phone", "webex-app", old).stale(now, "helpdesk-bot@me")


def test_a_socket_url_takes_the_https_proxy_unless_no_proxy_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("https_proxy", "http_proxy", "no_proxy", "wss_proxy", "ws_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert proxy_for(URL("wss://mercury.example.com/x")) == (None, None)
    monkeypatch.setenv("HTTPS_PROXY", "http://user:secret@proxy.corp:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.corp:8080")
    proxy, auth = proxy_for(URL("wss://mercury.example.com/x"))
    assert proxy == URL("http://proxy.corp:3128") and auth is not None and auth.login == "user"
    assert proxy_for(URL("ws://mercury.example.com/x"))[0] == URL("http://plain.corp:8080")
    monkeypatch.setenv("NO_PROXY", "example.com")
    assert proxy_for(URL("wss://mercury.example.com/x")) == (None, None)


# ---- the CLI ---------------------------------------------------------------------------------------------


async def test_devices_cli_lists_all_and_deletes_only_ours(tmp_path: Path) -> None:
    fake = SocketWebex()
    await fake.start()
    cloud = FakeCloud(fake)
    await cloud.start()
    try:
        cloud.add_device("helpdesk-bot@a")
        cloud.add_device("helpdesk-bot@old", age=timedelta(days=3))
        other = cloud.add_device("phone", model="webex-app")
        env = serve_env(
            WEBEX_ACCESS_TOKEN=fake.token, WEBEX_U2C_URL=cloud.u2c_url, HTTPS_PROXY="", HTTP_PROXY=""
        )

        async def cli(*args: str) -> str:
            return await _run(env, tmp_path, "devices", *args)

        listed = await cli("list")
        assert "helpdesk-bot@a" in listed and "other program" in listed and "ours, stale" in listed
        assert "deleted 1 device(s)" in await cli("delete", "--stale")
        assert sorted(d.name for d in cloud.devices.values()) == ["helpdesk-bot@a", "phone"]
        assert "deleted 1 device(s)" in await cli("delete")
        assert list(cloud.devices) == [other.id]
    finally:
        await cloud.close()
        await fake.close()


async def _run(env: dict[str, str], cwd: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    return out.decode()
