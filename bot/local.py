"""Local mode: an in-memory stand-in for the Webex API, so the same pipeline runs without a Webex account."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from bot.models import AttachmentAction, Message, Person
from bot.webex import WebexNotFound

LOCAL_ROOM = "local-room"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class LocalWebex:
    """Implements the handlers' WebexAPI in memory; the local HTTP routes feed it as Webex would."""

    def __init__(self) -> None:
        self.me = Person(
            id="local-bot", emails=("helpdesk-bot@local",), display_name="Helpdesk Bot", type="bot"
        )
        self.messages: dict[str, Message] = {}
        self.actions: dict[str, AttachmentAction] = {}
        self.members: set[tuple[str, str]] = set()
        self._seq = itertools.count(1)

    def _id(self, kind: str) -> str:
        return f"local-{kind}-{next(self._seq)}-{uuid.uuid4().hex[:8]}"

    # -- what the handlers call ---------------------------------------------------------------------

    async def get_me(self) -> Person:
        return self.me

    async def get_message(self, message_id: str) -> Message:
        try:
            return self.messages[message_id]
        except KeyError:
            raise WebexNotFound(
                "no such message", method="GET", path=f"/messages/{message_id}", status=404
            ) from None

    async def get_attachment_action(self, action_id: str) -> AttachmentAction:
        try:
            return self.actions[action_id]
        except KeyError:
            raise WebexNotFound(
                "no such action", method="GET", path=f"/attachment/actions/{action_id}", status=404
            ) from None

    async def is_member(self, room_id: str, person_id: str) -> bool:
        return (room_id, person_id) in self.members

    async def post_message(
        self,
        *,
        room_id: str | None = None,
        to_person_id: str | None = None,
        to_person_email: str | None = None,
        parent_id: str | None = None,
        text: str | None = None,
        markdown: str | None = None,
        attachments: Sequence[Mapping[str, Any]] | None = None,
    ) -> Message:
        message = Message.model_validate(
            {
                "id": self._id("msg"),
                "roomId": room_id or LOCAL_ROOM,
                "roomType": "direct",
                "personId": self.me.id,
                "personEmail": self.me.emails[0] if self.me.emails else "",
                "text": text or markdown or "",
                "markdown": markdown,
                "parentId": parent_id,
                "created": _now(),
                "attachments": [dict(a) for a in attachments or ()],
            }
        )
        self.messages[message.id] = message
        return message

    # -- what the local routes call (the "user" side) -----------------------------------------------

    def user_message(self, text: str, email: str, room_id: str = LOCAL_ROOM) -> Message:
        message = Message.model_validate(
            {
                "id": self._id("msg"),
                "roomId": room_id,
                "roomType": "direct",
                "personId": f"local-person-{email}",
                "personEmail": email,
                "text": text,
                "created": _now(),
            }
        )
        self.messages[message.id] = message
        return message

    def user_action(self, message_id: str, inputs: dict[str, Any], email: str) -> AttachmentAction:
        card = self.messages.get(message_id)
        action = AttachmentAction.model_validate(
            {
                "id": self._id("action"),
                "type": "submit",
                "messageId": message_id,
                "personId": f"local-person-{email}",
                "roomId": card.room_id if card else LOCAL_ROOM,
                "inputs": inputs,
                "created": _now(),
            }
        )
        self.actions[action.id] = action
        return action

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
