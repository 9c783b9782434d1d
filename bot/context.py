"""What every handler is given: settings, knowledge, store, Webex, metrics; and the one way to post."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.cards import OutgoingMessage
from bot.config import Settings
from bot.knowledge import KnowledgeBase
from bot.metrics import Metrics
from bot.models import AttachmentAction, Message, Person
from bot.store import InboxEvent, Store
from bot.triage import TriageIndex

log = logging.getLogger(__name__)

MEMBERSHIP_TTL_SECONDS = 60.0
MAX_SETUP_PAGES = 10_000


class WebexAPI(Protocol):
    """What the handlers need from Webex: the REST client in production, the local transport on a laptop."""

    async def get_me(self) -> Person: ...
    async def get_person(self, person_id: str) -> Person: ...
    async def get_message(self, message_id: str) -> Message: ...
    async def get_attachment_action(self, action_id: str) -> AttachmentAction: ...
    async def is_member(self, room_id: str, person_id: str) -> bool: ...
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
    ) -> Message: ...


@dataclass(slots=True)
class MembershipCache:
    """Helpdesk-space membership, asked of Webex and remembered briefly: a click is not worth a lookup."""

    ttl: float = MEMBERSHIP_TTL_SECONDS
    clock: Callable[[], float] = time.monotonic
    _seen: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)

    async def is_member(self, webex: WebexAPI, room_id: str, person_id: str) -> bool:
        key = (room_id, person_id)
        now = self.clock()
        hit = self._seen.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        member = await webex.is_member(room_id, person_id)
        self._seen[key] = (member, now + self.ttl)
        return member


@dataclass(slots=True)
class Knowledge:
    """The current knowledge and its index; replaced whole on reload so readers never see half of one."""

    kb: KnowledgeBase
    index: TriageIndex

    @classmethod
    def build(cls, kb: KnowledgeBase) -> Knowledge:
        return cls(kb, TriageIndex.build(kb))


@dataclass(slots=True)
class BotContext:
    settings: Settings
    knowledge: Knowledge
    store: Store
    webex: WebexAPI
    metrics: Metrics
    me: Person | None = None
    members: MembershipCache = field(default_factory=MembershipCache)
    # The setup-guide page each person last saw, per room, so "next" and "previous" work as text too.
    # In memory on purpose: losing it on restart costs one "okta setup"; bounded so it cannot grow forever.
    setup_pages: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)

    def remember_setup_page(self, room_id: str, person_id: str, page: int) -> None:
        self.setup_pages[(room_id, person_id)] = page
        self.setup_pages.move_to_end((room_id, person_id))
        while len(self.setup_pages) > MAX_SETUP_PAGES:
            self.setup_pages.popitem(last=False)

    @property
    def identity(self) -> Person:
        if self.me is None:
            raise RuntimeError("the bot's Webex identity is not known yet")
        return self.me


async def post_reply(
    ctx: BotContext,
    event: InboxEvent,
    room_id: str,
    parent_id: str | None,
    reply: OutgoingMessage,
    *,
    kind: str,
) -> None:
    """Post once per event: a retried event whose reply already went out does not post again."""
    if event.reply_message_id:
        log.info(
            "event %s already answered with %s; not posting again", event.event_id, event.reply_message_id
        )
        return
    body = reply.to_webex(room_id=room_id, parent_id=parent_id)
    posted = await ctx.webex.post_message(
        room_id=body["roomId"],
        parent_id=body.get("parentId"),
        markdown=body["markdown"],
        attachments=body.get("attachments"),
    )
    await ctx.store.record_reply(event.event_id, posted.id)
    ctx.metrics.replies_sent.labels(kind).inc()


async def post_once(
    ctx: BotContext, room_id: str, parent_id: str | None, reply: OutgoingMessage, *, kind: str
) -> Message:
    """Post a message that is not the event's own reply (a notice to the other side of a ticket)."""
    body = reply.to_webex(room_id=room_id, parent_id=parent_id)
    posted = await ctx.webex.post_message(
        room_id=body["roomId"],
        parent_id=body.get("parentId"),
        markdown=body["markdown"],
        attachments=body.get("attachments"),
    )
    ctx.metrics.replies_sent.labels(kind).inc()
    return posted
