"""What every handler is given: settings, knowledge, store, Webex, metrics; and the one way to post."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.cards import OutgoingMessage
from bot.config import Settings
from bot.knowledge import KnowledgeBase
from bot.limits import RateLimiter
from bot.metrics import Metrics
from bot.models import AttachmentAction, Message, Person
from bot.store import InboxEvent, Store, StoreUnavailable
from bot.triage import LANGS, TriageIndex
from bot.webex import FileUpload, WebexError, WebexMaybePosted

log = logging.getLogger(__name__)

MEMBERSHIP_TTL_SECONDS = 60.0
MAX_SETUP_PAGES = 10_000
MAX_REMEMBERED_REPLIES = 10_000
RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
LOOKBACK_MESSAGES = 20


class WebexAPI(Protocol):
    """What the handlers need from Webex: the REST client in production, the local transport on a laptop."""

    async def get_me(self) -> Person: ...
    async def get_person(self, person_id: str) -> Person: ...
    async def get_message(self, message_id: str) -> Message: ...
    async def get_attachment_action(self, action_id: str) -> AttachmentAction: ...
    async def list_messages(
        self, *, room_id: str, parent_id: str | None = None, max: int = 50
    ) -> list[Message]: ...
    async def is_member(self, room_id: str, person_id: str) -> bool: ...
    async def post_message(self, body: Mapping[str, Any]) -> Message: ...
    async def post_message_with_file(self, body: Mapping[str, Any], file: FileUpload) -> Message: ...


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
    """The current knowledge, its index and its views per language; replaced whole on reload so readers
    never see half of one. Another language's index and view are built the first time a message in it comes
    (about 10 ms; a bot that never sees one does not carry them: 1.5 MiB each)."""

    kb: KnowledgeBase
    index: TriageIndex  # English
    indexes: dict[str, TriageIndex] = field(default_factory=dict)
    views: dict[str, KnowledgeBase] = field(default_factory=dict)

    @classmethod
    def build(cls, kb: KnowledgeBase) -> Knowledge:
        index = TriageIndex.build(kb)
        return cls(kb, index, {"en": index}, {"en": kb})

    def index_for(self, lang: str) -> TriageIndex:
        found = self.indexes.get(lang)
        if found is None:
            if lang not in LANGS:
                return self.index
            found = self.indexes[lang] = TriageIndex.build(self.kb, lang=lang)
        return found

    def kb_for(self, lang: str) -> KnowledgeBase:
        found = self.views.get(lang)
        if found is None:
            if lang not in LANGS:
                return self.kb
            found = self.views[lang] = self.kb.in_language(lang)
        return found


@dataclass(slots=True)
class ReplicaState:
    """What this process has loaded of the knowledge the replicas share (bot/replicas.py keeps it)."""

    replica_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
    )
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    version: int = 0  # the shared knowledge version this process has loaded (or failed to, see error)
    error: str | None = None
    interval: float = 2.0  # seconds between heartbeats (REPLICA_CHECK_SECONDS)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one reload at a time in this process


@dataclass(slots=True)
class BotContext:
    settings: Settings
    knowledge: Knowledge
    store: Store
    webex: WebexAPI
    metrics: Metrics
    me: Person | None = None
    members: MembershipCache = field(default_factory=MembershipCache)
    limiter: RateLimiter = field(init=False)
    # The setup-guide page each person last saw, per room, so "next" and "previous" work as text too.
    # In memory on purpose: losing it on restart costs one "okta setup"; bounded so it cannot grow forever.
    setup_pages: OrderedDict[tuple[str, str], int] = field(default_factory=OrderedDict)
    # Replies posted by this process, by event: if recording one in the database fails, the retry of the
    # event still knows not to post it again.
    posted: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # The language each person last wrote in, per room: a short "ja" or "merci" keeps the conversation's.
    languages: OrderedDict[tuple[str, str], str] = field(default_factory=OrderedDict)
    replica: ReplicaState = field(default_factory=ReplicaState)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.settings.rate_limit_per_minute)

    def remember_language(self, room_id: str, person_id: str, lang: str) -> None:
        self.languages[(room_id, person_id)] = lang
        self.languages.move_to_end((room_id, person_id))
        while len(self.languages) > MAX_SETUP_PAGES:
            self.languages.popitem(last=False)

    def language_of(self, room_id: str, person_id: str) -> str:
        return self.languages.get((room_id, person_id), self.settings.default_language)

    def reply_language(self, room_id: str, person_id: str) -> str:
        """What the bot writes in to this person in this room: the helpdesk space has its own language."""
        if room_id == self.settings.helpdesk_room_id:
            return self.settings.helpdesk_language
        return self.language_of(room_id, person_id)

    def remember_posted(self, event_id: str, message_id: str) -> None:
        self.posted[event_id] = message_id
        while len(self.posted) > MAX_REMEMBERED_REPLIES:
            self.posted.popitem(last=False)

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


@dataclass(slots=True)
class Effects:
    """What an event already did (notices posted, a ticket changed), read from the store once per attempt:
    a retry after a crash skips those steps and resumes with the ones it missed."""

    store: Store
    event_id: str
    _known: dict[str, str] | None = None

    async def known(self) -> dict[str, str]:
        if self._known is None:
            self._known = await self.store.effects(self.event_id)
        return self._known

    async def record(self, step: str, value: str) -> None:
        await self.store.record_effect(self.event_id, step, value)
        (await self.known())[step] = value


@dataclass(frozen=True, slots=True)
class Click:
    """One card submit being handled: who pressed what on which card, and where the answer goes."""

    ctx: BotContext
    event: InboxEvent
    effects: Effects
    action: AttachmentAction
    # The card's thread in a group space (answers go there), None in a direct space.
    parent: str | None

    async def reply(self, message: OutgoingMessage, *, kind: str, parent: str | None = None) -> None:
        """The event's own answer, in the card's thread (or under `parent`)."""
        where = self.parent if parent is None else parent
        await post_reply(self.ctx, self.event, self.action.room_id, where, message, kind=kind)


async def _send(
    ctx: BotContext, room_id: str, parent_id: str | None, reply: OutgoingMessage, kind: str
) -> Message:
    posted = await ctx.webex.post_message(reply.to_webex(room_id=room_id, parent_id=parent_id))
    ctx.metrics.replies_sent.labels(kind).inc()
    return posted


async def _keep(ctx: BotContext, write: Callable[[], Awaitable[None]], what: str) -> None:
    """Write a fact about something already posted, riding out a short database outage: losing it would post
    the same message again when the event is retried."""
    for delay in RECORD_RETRY_DELAYS:
        try:
            await write()
            return
        except StoreUnavailable as exc:
            log.warning("could not record %s yet (%s); retrying in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
    await write()


async def _already_posted(
    ctx: BotContext, room_id: str, parent_id: str | None, reply: OutgoingMessage
) -> str | None:
    """The id of this very reply if Webex already has it (a POST whose answer was lost), else None.

    Webex has no idempotency keys, so the bot looks: its own message with the same text in the same thread.
    Where Webex won't let a bot list a room, it cannot tell, and posting again is the lesser evil."""
    markdown = reply.to_webex(room_id=room_id, parent_id=parent_id)["markdown"]
    try:
        recent = await ctx.webex.list_messages(room_id=room_id, parent_id=parent_id, max=LOOKBACK_MESSAGES)
    except WebexError as exc:
        log.warning("cannot check whether a reply in %s was already posted: %s", room_id, exc)
        return None
    me = ctx.identity.id
    return next((m.id for m in recent if m.person_id == me and m.markdown == markdown), None)


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
    known = event.reply_message_id or ctx.posted.get(event.event_id)
    if not known and event.attempts > 1:
        # A retry: an earlier attempt may have posted and died before hearing back.
        known = await _already_posted(ctx, room_id, parent_id, reply)
    if known:
        log.info("event %s already answered with %s; not posting again", event.event_id, known)
        if not event.reply_message_id:
            await _keep(ctx, lambda: ctx.store.record_reply(event.event_id, known), "the reply id")
        return
    try:
        posted_id = (await _send(ctx, room_id, parent_id, reply, kind)).id
    except WebexMaybePosted:
        found = await _already_posted(ctx, room_id, parent_id, reply)
        if found is None:
            raise  # not there: the worker retries, and the retry looks again before posting
        posted_id = found
    ctx.remember_posted(event.event_id, posted_id)
    await _keep(ctx, lambda: ctx.store.record_reply(event.event_id, posted_id), "the reply id")


async def post_once(
    ctx: BotContext,
    effects: Effects,
    room_id: str,
    parent_id: str | None,
    reply: OutgoingMessage,
    *,
    kind: str,
    step: str,
) -> str:
    """Post a message that is not the event's own reply (a notice to the other side of a ticket), once per
    event and step: a retried event skips what it already posted. The message's id, new or from before."""
    before = (await effects.known()).get(step)
    if before is not None:
        log.info("event %s: %s was already posted", effects.event_id, step)
        return before
    posted = await _send(ctx, room_id, parent_id, reply, kind)
    await _keep(ctx, lambda: effects.record(step, posted.id), step)
    return posted.id


async def post_file_once(
    ctx: BotContext,
    effects: Effects,
    room_id: str,
    parent_id: str | None,
    reply: OutgoingMessage,
    file: FileUpload,
    *,
    kind: str,
    step: str,
) -> str:
    """post_once for a message with a file (multipart): its text, one file, no card."""
    before = (await effects.known()).get(step)
    if before is not None:
        log.info("event %s: %s was already posted", effects.event_id, step)
        return before
    body = reply.to_webex(room_id=room_id, parent_id=parent_id)
    posted = await ctx.webex.post_message_with_file(body, file)
    ctx.metrics.replies_sent.labels(kind).inc()
    await _keep(ctx, lambda: effects.record(step, posted.id), step)
    return posted.id
