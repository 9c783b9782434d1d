"""The thin glue: fetch from Webex, route, triage, build the card, post it in the right thread."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot import cards
from bot.cards import FeedbackData, OutgoingMessage, SetupPageData, ShowData
from bot.config import Settings
from bot.knowledge import KnowledgeBase
from bot.metrics import Metrics
from bot.models import AttachmentAction, Message, Person, WebhookEnvelope
from bot.redact import redact
from bot.routing import reply_parent, route, strip_mention
from bot.store import InboxEvent, Store
from bot.triage import TriageIndex, triage

log = logging.getLogger(__name__)

SETUP_PAGE_SIZE = 4
MAX_STORED_TEXT = 2000


class WebexAPI(Protocol):
    """What the handlers need from Webex: the REST client in production, the local transport on a laptop."""

    async def get_me(self) -> Person: ...
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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> Person:
        if self.me is None:
            raise RuntimeError("the bot's Webex identity is not known yet")
        return self.me


class PermanentFailure(Exception):
    """Retrying cannot help (e.g. the message was deleted): the event is closed, not retried."""


async def handle_event(event: InboxEvent, ctx: BotContext) -> None:
    """One inbox event, start to finish. Raises to ask the worker for a retry."""
    envelope = WebhookEnvelope.model_validate(event.payload)
    if envelope.resource == "messages":
        await on_message_created(envelope, event, ctx)
    elif envelope.resource == "attachmentActions":
        await on_attachment_action_created(envelope, event, ctx)
    else:  # the webhook view only persists the two resources above
        log.warning("event %s: unexpected resource %r, dropped", event.event_id, envelope.resource)


async def on_message_created(envelope: WebhookEnvelope, event: InboxEvent, ctx: BotContext) -> None:
    data = envelope.message_data()
    me = ctx.identity
    if data.person_id == me.id:
        ctx.metrics.events_ignored.labels("self").inc()
        return
    message = await ctx.webex.get_message(data.id)
    if message.person_id == me.id or message.person_email.casefold().endswith("@webex.bot"):
        ctx.metrics.events_ignored.labels("bot").inc()
        return
    parent = reply_parent(message)
    if not ctx.settings.is_allowed(message.person_email):
        log.info("message %s from a domain outside ALLOWED_EMAIL_DOMAINS refused", message.id)
        await post_reply(ctx, event, message.room_id, parent, cards.refusal(REFUSAL_DOMAIN), kind="refusal")
        return
    text = strip_mention(message, me)
    reply = answer(text, message, event, ctx)
    if reply.triage is not None:
        await ctx.store.record_triage(
            event_id=event.event_id,
            person_id=message.person_id,
            person_email=message.person_email,
            room_id=message.room_id,
            text=redact(text[:MAX_STORED_TEXT]),
            outcome=reply.triage.outcome,
            top_id=reply.triage.best.id if reply.triage.best else None,
            score=reply.triage.best.score if reply.triage.best else None,
            codes=list(reply.triage.codes),
        )
        ctx.metrics.triage_outcomes.labels(_outcome_label(reply.triage.outcome)).inc()
    await post_reply(ctx, event, message.room_id, parent, reply.message, kind=reply.kind)


REFUSAL_DOMAIN = "Sorry, I can only help people from this organisation. Please contact your own IT helpdesk."


@dataclass(frozen=True, slots=True)
class Reply:
    message: OutgoingMessage
    kind: str
    triage: Any = None  # the TriageResult when the reply came from triage


def answer(text: str, message: Message, event: InboxEvent, ctx: BotContext) -> Reply:
    """Route one message to its reply. Pure apart from reading the current knowledge."""
    kb, index = ctx.knowledge.kb, ctx.knowledge.index
    thread_id = message.parent_id or message.id
    r = route(text)
    if r.kind in {"empty", "help"}:
        return Reply(
            cards.help_card(kb, ctx.settings.is_admin(message.person_email), thread_id=thread_id), "help"
        )
    if r.kind == "setup":
        return Reply(
            cards.setup_guide_card(kb, r.step // SETUP_PAGE_SIZE, thread_id, SETUP_PAGE_SIZE), "setup"
        )
    result = triage(text, index)
    return Reply(cards.build(result, kb, thread_id, text), f"triage-{result.outcome}", result)


def _outcome_label(outcome: str) -> str:
    return {"fix": "confident", "clarify": "clarify"}.get(outcome, "none")


async def on_attachment_action_created(envelope: WebhookEnvelope, event: InboxEvent, ctx: BotContext) -> None:
    data = envelope.action_data()
    if data.person_id == ctx.identity.id:
        ctx.metrics.events_ignored.labels("self").inc()
        return
    action = await ctx.webex.get_attachment_action(data.id)
    submit = cards.parse_submit(action.inputs)
    if submit is None:
        # Forged or stale: say nothing to the sender, leave a trace for us.
        log.warning(
            "card submit %s from %s refused: unknown verb or bad fields (keys=%s)",
            action.id,
            action.person_id,
            sorted(map(str, action.inputs))[:10],
        )
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    card_message = await ctx.webex.get_message(action.message_id)
    if card_message.person_id != ctx.identity.id:
        log.warning(
            "card submit %s points at message %s that the bot did not send", action.id, action.message_id
        )
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    parent = submit.thread_id if card_message.room_type == "group" else None
    kb = ctx.knowledge.kb
    if isinstance(submit, FeedbackData):
        new = await ctx.store.record_feedback(
            action_id=action.id,
            person_id=action.person_id,
            article_id=submit.article_id,
            helpful=submit.helpful,
            thread_id=submit.thread_id,
        )
        if new:
            await post_reply(
                ctx, event, action.room_id, parent, cards.feedback_ack(submit.helpful, kb), kind="feedback"
            )
    elif isinstance(submit, ShowData):
        article = kb.article(submit.article_id)
        if article is None:
            reply = cards.refusal("That article is no longer in the knowledge base. Try asking again.")
        else:
            reply = cards.article_card(article, kb, submit.thread_id)
        await post_reply(ctx, event, action.room_id, parent, reply, kind="article")
    elif isinstance(submit, SetupPageData):
        reply = cards.setup_guide_card(kb, submit.page, submit.thread_id, SETUP_PAGE_SIZE)
        await post_reply(ctx, event, action.room_id, parent, reply, kind="setup")


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


async def tell_failure(event: InboxEvent, ctx: BotContext) -> None:
    """After the last retry: an honest short message, when we know where to send it."""
    try:
        envelope = WebhookEnvelope.model_validate(event.payload)
        room_id = envelope.data.get("roomId")
        if not isinstance(room_id, str) or event.reply_message_id:
            return
        msg = cards.text_message(
            "Sorry, I couldn't answer your last message because of a problem on my side. "
            "Please try again later or contact the helpdesk."
        )
        await ctx.webex.post_message(room_id=room_id, markdown=msg.markdown)
    except Exception:  # best effort: the failure is already logged and stored
        log.exception("could not tell the user about failed event %s", event.event_id)
