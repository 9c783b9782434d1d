"""Sans-I/O: frames of the Webex websocket (mercury) in, inbox events like the webhooks' and acks out."""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from bot.hydra import US, parse_rest_id, rest_id

log = logging.getLogger(__name__)

OPEN_EVENTS = frozenset({"mercury.buffer_state", "mercury.registration_status"})
SAFE = "safe"
# Shares whose files are still being scanned, waiting for the update that says they are safe.
MAX_HELD_SHARES = 256

FrameKind = Literal["event", "open", "pong", "held", "ignored", "malformed"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class Actor(_Model):
    entry_uuid: str = Field(default="", alias="entryUUID")
    email_address: str = Field(default="", alias="emailAddress")
    type: str = ""


class Target(_Model):
    id: str = ""
    url: str = ""
    tags: tuple[str, ...] = ()


class Parent(_Model):
    id: str = ""
    type: str = ""


class Activity(_Model):
    id: str = Field(min_length=1, max_length=100)
    verb: str
    published: datetime | None = None
    actor: Actor = Actor()
    # Its shape depends on the verb (comment, content with files, submit); read through the helpers.
    object: dict[str, Any] = Field(default_factory=dict)
    target: Target = Target()
    parent: Parent | None = None


class Envelope(_Model):
    id: str | None = None
    type: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    sequence_number: int | None = Field(default=None, alias="sequenceNumber")
    tracking_id: str | None = Field(default=None, alias="trackingId")


@dataclass(frozen=True, slots=True)
class InboxItem:
    """One event for the inbox, keyed and shaped exactly as the webhook path stores it."""

    event_id: str
    resource: Literal["messages", "attachmentActions"]
    payload: str


@dataclass(frozen=True, slots=True)
class Frame:
    """What one frame asks of the socket: store `events`, then ack `acks` (at once when there are none)."""

    kind: FrameKind
    acks: tuple[str, ...] = ()
    events: tuple[InboxItem, ...] = ()
    reason: str = ""
    pong_id: str | None = None
    gap: bool = False


@dataclass(slots=True)
class _Held:
    envelope_id: str
    activity: Activity


@dataclass(slots=True)
class Translator:
    """Turns frames into inbox events. `me_uuid` (the bot's bare uuid) drops the bot's own activities;
    `clusters` maps the catalog's hosts to REST id clusters, so ids match those the webhooks carry."""

    me_uuid: str | None = None
    clusters: Mapping[str, str] = field(default_factory=dict)
    _next_sequence: int | None = None
    _held: OrderedDict[str, _Held] = field(default_factory=OrderedDict)

    def new_connection(self) -> None:
        """Sequence numbers start again on every connection."""
        self._next_sequence = None

    @property
    def held_shares(self) -> int:
        return len(self._held)

    def on_frame(self, text: str) -> Frame:
        try:
            envelope = Envelope.model_validate_json(text)
        except ValueError:
            return Frame("malformed", reason="not a JSON envelope")
        if envelope.type == "pong":
            return Frame("pong", pong_id=envelope.id)
        gap = self._sequence_gap(envelope.sequence_number)
        event_type = envelope.data.get("eventType")
        if event_type in OPEN_EVENTS:
            return Frame("open", acks=_ids(envelope.id), gap=gap)
        if event_type != "conversation.activity" or envelope.id is None:
            return Frame("ignored", acks=_ids(envelope.id), reason=str(event_type or envelope.type), gap=gap)
        try:
            activity = Activity.model_validate(envelope.data.get("activity"))
        except ValidationError as exc:
            log.warning("websocket activity %s is malformed: %s", envelope.id, str(exc).splitlines()[0])
            # Acknowledged all the same: a frame that never parses must not come back on every connection.
            return Frame("malformed", acks=(envelope.id,), reason="activity", gap=gap)
        frame = self._on_activity(envelope.id, activity)
        return Frame(frame.kind, frame.acks, frame.events, frame.reason, gap=gap)

    # ---- activities ------------------------------------------------------------------------------

    def _on_activity(self, envelope_id: str, activity: Activity) -> Frame:
        verb = activity.verb
        if verb not in ("post", "share", "update", "cardAction"):
            return Frame("ignored", acks=(envelope_id,), reason=f"verb-{verb}"[:40])
        if verb == "update":
            return self._on_update(envelope_id, activity)
        not_ours = self._not_for_us(activity)
        if not_ours:
            return Frame("ignored", acks=(envelope_id,), reason=not_ours)
        if verb == "cardAction":
            return self._event(envelope_id, activity, "attachmentActions")
        if verb == "share" and not _files_safe(activity.object):
            # Webex scans files first; the message is answered once an update says they are safe.
            self._held[activity.id] = _Held(envelope_id, activity)
            self._held.move_to_end(activity.id)
            evicted = self._evict()
            return Frame("held", acks=evicted, reason="files not yet safe")
        return self._event(envelope_id, activity, "messages")

    def _on_update(self, envelope_id: str, activity: Activity) -> Frame:
        obj = activity.object
        if obj.get("objectType") != "content" or not self._held:
            return Frame("ignored", acks=(envelope_id,), reason="verb-update")
        if not _files_safe(obj):
            return Frame("ignored", acks=(envelope_id,), reason="files not yet safe")
        held = self._held.pop(str(obj.get("id", "")), None) or self._oldest_in(activity.target.id)
        if held is None:
            return Frame("ignored", acks=(envelope_id,), reason="update of an unknown share")
        frame = self._event(held.envelope_id, held.activity, "messages")
        return Frame(frame.kind, (*frame.acks, envelope_id), frame.events)

    def _oldest_in(self, conversation: str) -> _Held | None:
        for key, held in self._held.items():
            if held.activity.target.id == conversation:
                return self._held.pop(key)
        return None

    def _evict(self) -> tuple[str, ...]:
        evicted = []
        while len(self._held) > MAX_HELD_SHARES:
            _, held = self._held.popitem(last=False)
            log.warning("gave up waiting for the files of shared message %s to be scanned", held.activity.id)
            evicted.append(held.envelope_id)
        return tuple(evicted)

    def _not_for_us(self, activity: Activity) -> str:
        actor = activity.actor
        if self.me_uuid is not None and actor.entry_uuid.lower() == self.me_uuid.lower():
            return "self"
        if actor.email_address.casefold().endswith("@webex.bot"):
            return "bot"
        if not activity.target.id:
            return "no-conversation"
        mentions = activity.object.get("mentions")
        if activity.verb != "cardAction" and not _is_direct(activity) and isinstance(mentions, dict):
            # Webhooks bring a bot only the group messages that mention it; the socket must not bring more.
            items = mentions.get("items") or []
            if self.me_uuid is not None and not any(
                isinstance(i, dict) and str(i.get("id", "")).lower() == self.me_uuid.lower() for i in items
            ):
                return "not-mentioned"
        return ""

    def _event(
        self, envelope_id: str, activity: Activity, resource: Literal["messages", "attachmentActions"]
    ) -> Frame:
        cluster = self._cluster(activity.target.url)
        person_id = rest_id("PEOPLE", activity.actor.entry_uuid)  # people ids always use "us"
        room_id = rest_id("ROOM", activity.target.id, cluster)
        created = activity.published.isoformat() if activity.published else None
        data: dict[str, Any]
        if resource == "messages":
            data = {
                "id": rest_id("MESSAGE", activity.id, cluster),
                "roomId": room_id,
                "roomType": "direct" if _is_direct(activity) else "group",
                "personId": person_id,
                "personEmail": activity.actor.email_address,
                "created": created,
            }
        else:
            if activity.parent is None or not activity.parent.id:
                log.warning("card action %s names no card message; ignored", activity.id)
                return Frame("malformed", acks=(envelope_id,), reason="card action without a card")
            data = {
                "id": rest_id("ATTACHMENT_ACTION", activity.id, cluster),
                "type": "submit",
                "messageId": rest_id("MESSAGE", activity.parent.id, cluster),
                "personId": person_id,
                "roomId": room_id,
                "created": created,
            }
        payload = {
            "id": envelope_id,
            "name": "websocket",
            "resource": resource,
            "event": "created",
            "created": created,
            "actorId": person_id,
            "data": data,
        }
        return Frame(
            "event",
            acks=(envelope_id,),
            events=(InboxItem(data["id"], resource, json.dumps(payload, separators=(",", ":"))),),
        )

    def _cluster(self, conversation_url: str) -> str:
        try:
            host = URL(conversation_url).host
        except ValueError:
            return US
        return self.clusters.get(host or "", US)

    def _sequence_gap(self, sequence: int | None) -> bool:
        if sequence is None:
            return False
        expected, self._next_sequence = self._next_sequence, sequence + 1
        return expected is not None and sequence > expected


def bare_uuid(person_id: str) -> str:
    """The uuid inside a REST person id (the actor's entryUUID in activities)."""
    parts = parse_rest_id(person_id)
    return parts.uuid if parts is not None else person_id


def _ids(envelope_id: str | None) -> tuple[str, ...]:
    return (envelope_id,) if envelope_id else ()


def _is_direct(activity: Activity) -> bool:
    return "ONE_ON_ONE" in activity.target.tags


def _files_safe(obj: Mapping[str, Any]) -> bool:
    files = obj.get("files")
    items = files.get("items") if isinstance(files, dict) else None
    if not isinstance(items, list):
        return not files  # a share without files (or none listed) has nothing to wait for
    return all(isinstance(i, dict) and i.get("malwareQuarantineState") == SAFE for i in items)
