"""After a gap in the websocket: find the messages the bot missed, where Webex lets a bot list them."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from bot.hydra import dedupe_key
from bot.mercury import InboxItem
from bot.models import Message, Person
from bot.webex import WebexClient, WebexError

log = logging.getLogger(__name__)

MAX_ROOMS = 100  # the most recently active spaces; a gap of minutes touches few
MAX_MESSAGES = 50  # per space


async def catch_up(
    webex: WebexClient, me: Person, since: datetime, enqueue: Callable[[InboxItem], Awaitable[bool]]
) -> int:
    """Queue every message since `since` that a bot may list (direct spaces; mentions in group spaces) and
    that the inbox does not hold yet; returns how many were new. The inbox's key makes it safe to overlap."""
    new = 0
    for room in await webex.list_rooms_by_activity(max=MAX_ROOMS):
        if room.last_activity is not None and room.last_activity < since:
            break  # sorted by activity: every later room is older still
        try:
            if room.type == "direct":
                missed = _unanswered(await webex.list_messages(room_id=room.id, max=MAX_MESSAGES), me)
            else:
                missed = await webex.list_mentions(room_id=room.id, max=MAX_MESSAGES)
        except WebexError as exc:
            log.warning("catch-up skipped space %s: %s", room.id, exc)
            continue
        for message in reversed(missed):  # oldest first, as they were sent
            if message.created is None or message.created < since or _from_a_bot(message, me):
                continue
            new += await enqueue(_as_event(message))
    return new


def _unanswered(newest_first: list[Message], me: Person) -> list[Message]:
    """In a direct space the bot answers every message, so only those after its last word can be missed;
    that also holds after the inbox was purged or replaced."""
    missed = []
    for message in newest_first:
        if message.person_id == me.id:
            break
        missed.append(message)
    return missed


def _from_a_bot(message: Message, me: Person) -> bool:
    return message.person_id == me.id or message.person_email.casefold().endswith("@webex.bot")


def _as_event(message: Message) -> InboxItem:
    """The messages/created webhook this message would have brought."""
    data = {
        "id": message.id,
        "roomId": message.room_id,
        "roomType": message.room_type,
        "personId": message.person_id,
        "personEmail": message.person_email,
        "created": message.created.isoformat() if message.created else None,
    }
    payload = {
        "id": "catch-up",
        "name": "catch-up",
        "resource": "messages",
        "event": "created",
        "actorId": message.person_id,
        "data": data,
    }
    return InboxItem(dedupe_key(message.id), "messages", json.dumps(payload, separators=(",", ":")))
