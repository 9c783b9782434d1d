"""Local mode: an in-memory stand-in for the Webex API, so the same pipeline runs without a Webex account."""

from __future__ import annotations

import asyncio
import itertools
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from bot.models import AttachmentAction, Message, Person
from bot.webex import FileUpload, WebexBadRequest, WebexNotFound, check_file_body

RoomType = Literal["direct", "group"]

EMPLOYEE_EMAIL = "you@example.com"  # who the playground's employee tab speaks as by default
AGENT_EMAIL = "agent@example.com"  # the helpdesk agent, a member of the helpdesk space
LOCAL_ROOM = "local-room"  # the default employee's direct space with the bot
LOCAL_HELPDESK_ROOM = "local-helpdesk"  # the helpdesk's group space (HELPDESK_ROOM_ID in local mode)
PERSON_PREFIX = "local-person-"
# Names the playground's people go by; anyone else is named after their email.
DISPLAY_NAMES = {EMPLOYEE_EMAIL: "Sam Employee", AGENT_EMAIL: "Alex Agent"}
# The same bound Webex puts on text/markdown, so the playground refuses what Webex would refuse.
MAX_MARKDOWN_BYTES = 7439
FILES_PATH = "/local/files/"  # where the local routes serve uploaded files


def person_id(email: str) -> str:
    """Stable per email (case-insensitive), as a Webex person id is."""
    return PERSON_PREFIX + email.casefold()


def display_name(email: str) -> str:
    known = DISPLAY_NAMES.get(email.casefold())
    if known:
        return known
    local_part = email.partition("@")[0]
    return " ".join(part.capitalize() for part in re.split(r"[._+-]+", local_part) if part) or email


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class LocalWebex:
    """Implements the handlers' WebexAPI in memory; the local HTTP routes feed it as Webex would."""

    def __init__(self, *, helpdesk_agents: Sequence[str] = (AGENT_EMAIL,)) -> None:
        self.me = Person(
            id="local-bot", emails=("helpdesk-bot@local",), display_name="Helpdesk Bot", type="bot"
        )
        self.messages: dict[str, Message] = {}
        self.actions: dict[str, AttachmentAction] = {}
        self.files: dict[str, FileUpload] = {}  # uploads by id (the stats chart), kept while the process runs
        self.members: set[tuple[str, str]] = set()
        self.rooms: dict[str, RoomType] = {LOCAL_HELPDESK_ROOM: "group"}
        self._direct: dict[str, str] = {}
        self._log: list[Message] = []  # every message in order; a poll cursor is an index into it
        self._changed = asyncio.Event()
        self._closing = False
        self._seq = itertools.count(1)
        self.direct_room(EMPLOYEE_EMAIL, room_id=LOCAL_ROOM)
        for email in helpdesk_agents:
            self.add_member(LOCAL_HELPDESK_ROOM, email)

    def _id(self, kind: str) -> str:
        return f"local-{kind}-{next(self._seq)}-{uuid.uuid4().hex[:8]}"

    # -- spaces and people --------------------------------------------------------------------------

    def add_member(self, room_id: str, email: str) -> None:
        self.rooms.setdefault(room_id, "group")
        self.members.add((room_id, person_id(email)))

    def direct_room(self, email: str, *, room_id: str | None = None) -> str:
        """The 1:1 space between `email` and the bot, created on first use."""
        key = email.casefold()
        if key not in self._direct:
            room = room_id or self._id("direct")
            self._direct[key] = room
            self.rooms[room] = "direct"
            self.members.update({(room, person_id(key)), (room, self.me.id)})
        return self._direct[key]

    # -- what the handlers call ---------------------------------------------------------------------

    async def get_me(self) -> Person:
        return self.me

    async def get_person(self, person_id: str) -> Person:
        if person_id == self.me.id:
            return self.me
        if not person_id.startswith(PERSON_PREFIX):
            raise WebexNotFound("no such person", method="GET", path=f"/people/{person_id}", status=404)
        email = person_id.removeprefix(PERSON_PREFIX)
        name = display_name(email)
        first, _, last = name.partition(" ")
        return Person(
            id=person_id,
            emails=(email,),
            display_name=name,
            first_name=first,
            last_name=last or None,
            type="person",
        )

    async def get_message(self, message_id: str) -> Message:
        try:
            return self.messages[message_id]
        except KeyError:
            raise WebexNotFound(
                "no such message", method="GET", path=f"/messages/{message_id}", status=404
            ) from None

    async def list_messages(
        self, *, room_id: str, parent_id: str | None = None, max: int = 50
    ) -> list[Message]:
        found = [
            m
            for m in self.messages.values()
            if m.room_id == room_id and (parent_id is None or m.parent_id == parent_id)
        ]
        return list(reversed(found))[:max]

    async def get_attachment_action(self, action_id: str) -> AttachmentAction:
        try:
            return self.actions[action_id]
        except KeyError:
            raise WebexNotFound(
                "no such action", method="GET", path=f"/attachment/actions/{action_id}", status=404
            ) from None

    async def is_member(self, room_id: str, person_id: str) -> bool:
        return (room_id, person_id) in self.members

    async def post_message(self, body: Mapping[str, Any]) -> Message:
        return self._post(body, ())

    async def post_message_with_file(self, body: Mapping[str, Any], file: FileUpload) -> Message:
        """An upload as Webex takes it (text fields and one file); the playground shows it from FILES_PATH."""
        try:
            check_file_body(body, file)
        except ValueError as exc:
            raise self._bad_request(str(exc)) from None
        file_id = self._id("file")
        self.files[file_id] = file
        return self._post(body, (f"{FILES_PATH}{file_id}",))

    def _post(self, body: Mapping[str, Any], files: Sequence[str]) -> Message:
        room = self._destination(body.get("roomId"), body.get("toPersonId"), body.get("toPersonEmail"))
        text, markdown = body.get("text"), body.get("markdown")
        parent_id, attachments = body.get("parentId"), body.get("attachments")
        # Refuse what Webex refuses, so a bug shows up here rather than in production.
        if not (text or markdown):
            raise self._bad_request("text or markdown is required")
        if len((markdown or text or "").encode()) > MAX_MARKDOWN_BYTES:
            raise self._bad_request(f"markdown is longer than {MAX_MARKDOWN_BYTES} bytes")
        if attachments is not None and len(attachments) > 1:
            raise self._bad_request("only one attachment is allowed")
        if parent_id is not None:
            parent = self.messages.get(parent_id)
            if parent is None or parent.room_id != room:
                raise self._bad_request("parentId is not a message in this space")
            if parent.parent_id is not None:
                raise self._bad_request("cannot reply to a reply: use the thread's first message")
        message = self._store(
            {
                "id": self._id("msg"),
                "roomId": room,
                "roomType": self.rooms[room],
                "personId": self.me.id,
                "personEmail": self.me.emails[0] if self.me.emails else "",
                "text": text or markdown or "",
                "markdown": markdown,
                "parentId": parent_id,
                "created": _now(),
                "attachments": [dict(a) for a in attachments or ()],
                "files": list(files),
            }
        )
        return message

    def _destination(self, room_id: str | None, to_person_id: str | None, to_person_email: str | None) -> str:
        if sum(x is not None for x in (room_id, to_person_id, to_person_email)) != 1:
            raise self._bad_request("exactly one of roomId, toPersonId or toPersonEmail is required")
        if room_id is not None:
            if room_id not in self.rooms:
                raise WebexNotFound("no such room", method="POST", path="/messages", status=404)
            return room_id
        if to_person_id is not None:
            if not to_person_id.startswith(PERSON_PREFIX):
                raise WebexNotFound("no such person", method="POST", path="/messages", status=404)
            return self.direct_room(to_person_id.removeprefix(PERSON_PREFIX))
        assert to_person_email is not None
        return self.direct_room(to_person_email)

    @staticmethod
    def _bad_request(reason: str) -> WebexBadRequest:
        return WebexBadRequest(reason, method="POST", path="/messages", status=400)

    def _store(self, fields: dict[str, Any]) -> Message:
        message = Message.model_validate(fields)
        self.messages[message.id] = message
        self._log.append(message)
        # Wake every long poll; each checks whether the news is for its space.
        self._changed.set()
        self._changed = asyncio.Event()
        return message

    # -- what the local routes call (the "user" side) -----------------------------------------------

    def user_message(self, text: str, email: str, room_id: str | None = None) -> Message:
        room = room_id or self.direct_room(email)
        return self._store(
            {
                "id": self._id("msg"),
                "roomId": room,
                "roomType": self.rooms.get(room, "group"),
                "personId": person_id(email),
                "personEmail": email,
                "text": text,
                "created": _now(),
            }
        )

    def user_action(self, message_id: str, inputs: dict[str, Any], email: str) -> AttachmentAction | None:
        """A card submit by `email`, or None when there is no such message (Webex answers 404)."""
        card = self.messages.get(message_id)
        if card is None:
            return None
        action = AttachmentAction.model_validate(
            {
                "id": self._id("action"),
                "type": "submit",
                "messageId": message_id,
                "personId": person_id(email),
                "roomId": card.room_id,
                "inputs": inputs,
                "created": _now(),
            }
        )
        self.actions[action.id] = action
        return action

    def messages_after(self, room_id: str, cursor: int) -> tuple[list[Message], int]:
        """The messages of one space posted after `cursor`, and the cursor to pass next time."""
        start = min(max(cursor, 0), len(self._log))
        return [m for m in self._log[start:] if m.room_id == room_id], len(self._log)

    async def wait_for_messages(self, room_id: str, cursor: int) -> tuple[list[Message], int]:
        """Like messages_after, but waits for the first one (a long poll): bound it with asyncio.timeout."""
        while True:
            found, next_cursor = self.messages_after(room_id, cursor)
            if found or self._closing:
                return found, next_cursor
            await self._changed.wait()

    def close(self) -> None:
        """Release every long poll now, so a shutdown need not wait for them."""
        self._closing = True
        self._changed.set()

    def envelope(self, resource: str, data: dict[str, Any]) -> dict[str, Any]:
        """A webhook envelope as Webex would send it, so local events enter through the same inbox."""
        return {
            "id": "local-webhook",
            "name": "local",
            "targetUrl": "local",
            "resource": resource,
            "event": "created",
            "orgId": "local",
            "createdBy": self.me.id,
            "appId": "local",
            "ownedBy": "creator",
            "status": "active",
            "created": _now(),
            "actorId": data.get("personId", ""),
            "data": data,
        }
