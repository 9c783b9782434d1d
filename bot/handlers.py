"""The thin glue: fetch from Webex, route, triage, build the card, post it in the right thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot import cards, tickets
from bot.cards import (
    EscalateData,
    FeedbackData,
    OutgoingMessage,
    SetupPageData,
    ShowData,
)
from bot.charts import CHART_FILENAME, CHART_TYPE, stats_chart
from bot.context import BotContext, Click, Effects, Knowledge, WebexAPI, post_file_once, post_once, post_reply
from bot.dispatch import Router
from bot.gaps import find_gaps
from bot.i18n import N_, _, current_language, using_language
from bot.limits import SLOW_DOWN
from bot.models import Message, WebhookEnvelope
from bot.redact import redact
from bot.replicas import reload_everywhere
from bot.routing import Route, RouteKind, reply_parent, route, strip_mention
from bot.store import InboxEvent
from bot.triage import TriageResult, asked_language, message_language, triage
from bot.webex import FileUpload, WebexError, WebexMaybePosted, WebexNotFound

__all__ = ["BotContext", "Knowledge", "WebexAPI", "handle_event", "tell_failure"]

log = logging.getLogger(__name__)

SETUP_PAGE_SIZE = 4
MAX_STORED_TEXT = 2000

# Card submits by their type: the ticket verbs come from tickets.py, the rest are registered below.
submits: Router[type, tickets.SubmitHandler] = Router(tickets.submits)


async def handle_event(event: InboxEvent, ctx: BotContext) -> None:
    """One inbox event, start to finish. Raises to ask the worker for a retry."""
    envelope = WebhookEnvelope.model_validate(event.payload)
    if envelope.resource == "messages":
        await on_message_created(envelope, event, ctx)
    elif envelope.resource == "attachmentActions":
        await on_attachment_action_created(envelope, event, ctx)
    else:  # the inbound paths only persist the two resources above
        log.warning("event %s: unexpected resource %r, dropped", event.event_id, envelope.resource)


async def on_message_created(envelope: WebhookEnvelope, event: InboxEvent, ctx: BotContext) -> None:
    started = time.monotonic()
    data = envelope.message_data()
    me = ctx.identity
    if data.person_id == me.id:
        ctx.metrics.events_ignored.labels("self").inc()
        return

    async def thread() -> tuple[str, str | None]:
        found = await ctx.webex.get_message(data.id)
        return found.room_id, reply_parent(found)

    if await over_limit(ctx, event, data.person_id, thread):
        return
    message = await ctx.webex.get_message(data.id)
    if message.person_id == me.id or message.person_email.casefold().endswith("@webex.bot"):
        ctx.metrics.events_ignored.labels("bot").inc()
        return
    parent = reply_parent(message)
    text = strip_mention(message, me)
    if not ctx.settings.is_allowed(message.person_email):
        log.info("message %s from a domain outside ALLOWED_EMAIL_DOMAINS refused", message.id)
        lang = message_language(text, ctx.knowledge.index) or ctx.language_of(
            message.room_id, message.person_id
        )
        with using_language(lang):
            refusal = cards.refusal(_(REFUSAL_DOMAIN))
        await post_reply(ctx, event, message.room_id, parent, refusal, kind="refusal")
        return
    # The conversation log feeds ticket transcripts; redacted before it is stored.
    await ctx.store.log_message(
        room_id=message.room_id,
        thread_id=parent,
        person_id=message.person_id,
        who=message.person_email or message.person_id,
        text=redact(text[:MAX_STORED_TEXT]),
    )
    reply = await answer(text, message, ctx)
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
            thread_id=message.parent_id or message.id,
        )
        ctx.metrics.triage_outcomes.labels(_outcome_label(reply.triage.outcome)).inc()
    await post_reply(ctx, event, message.room_id, parent, reply.message, kind=reply.kind)
    if reply.upload is not None:
        await _post_upload(ctx, event, message.room_id, parent, reply.upload)
    await ctx.store.log_message(
        room_id=message.room_id,
        thread_id=parent,
        person_id=ctx.identity.id,
        who="bot",
        # The reply's first line, without its markdown: the transcript is plain text.
        text=reply.message.markdown.split("\n", 1)[0].replace("**", "")[:MAX_STORED_TEXT],
    )
    # What an operator needs to see the bot at work, and never what the person wrote.
    best = reply.triage.best if reply.triage is not None else None
    log.info(
        "message %s: %s, article %s, %.0f ms",
        message.id,
        reply.kind,
        best.id if best else "-",
        (time.monotonic() - started) * 1000,
    )


async def over_limit(
    ctx: BotContext,
    event: InboxEvent,
    person_id: str,
    thread: Callable[[], Awaitable[tuple[str, str | None]]],
) -> bool:
    """Over RATE_LIMIT_PER_MINUTE: the first event is told to slow down (in its thread), the rest get nothing.
    Checked before any other Webex call, so a flood costs one database write per event."""
    verdict = ctx.limiter.take(person_id)
    if verdict == "ok":
        return False
    ctx.metrics.events_ignored.labels("rate-limited").inc()
    if verdict == "note":
        log.warning(
            "%s is over RATE_LIMIT_PER_MINUTE: told to slow down; their next events are dropped", person_id
        )
        try:
            room_id, parent = await thread()
        except WebexNotFound:
            return True
        await post_reply(ctx, event, room_id, parent, cards.text_message(_(SLOW_DOWN)), kind="slow-down")
    return True


REFUSAL_DOMAIN = N_(
    "Sorry, I can only help people from this organisation. Please contact your own IT helpdesk."
)


@dataclass(frozen=True, slots=True)
class Upload:
    """A file that follows the reply as a message of its own: Webex takes a card or an upload, not both."""

    message: OutgoingMessage
    file: FileUpload


@dataclass(frozen=True, slots=True)
class Reply:
    message: OutgoingMessage
    kind: str
    triage: TriageResult | None = None
    upload: Upload | None = None


async def _post_upload(
    ctx: BotContext, event: InboxEvent, room_id: str, parent: str | None, upload: Upload
) -> None:
    effects = Effects(ctx.store, event.event_id)
    try:
        await post_file_once(
            ctx, effects, room_id, parent, upload.message, upload.file, kind="file", step="file"
        )
    except WebexMaybePosted as exc:
        # It may be there already; a second copy would be worse than none.
        log.warning(
            "event %s: the upload of %s may not have arrived: %s", event.event_id, upload.file.filename, exc
        )
    except WebexError as exc:
        log.warning("event %s: Webex refused the upload of %s: %s", event.event_id, upload.file.filename, exc)
        note = cards.text_message(
            f"I couldn't attach {upload.file.filename}: Webex said no ({exc.status or 'no answer'})."
        )
        await post_once(ctx, effects, room_id, parent, note, kind="file", step="file-failed")


Command = Callable[[Route, Message, BotContext], Awaitable[Reply]]
# What each kind of message gets; everything that is not a command is triaged.
commands: Router[RouteKind, Command] = Router()


async def answer(text: str, message: Message, ctx: BotContext) -> Reply:
    """Route one message to its reply."""
    asked = asked_language(text)
    if asked is not None:
        # "in English please", "auf Deutsch": answers from now on are in that language.
        ctx.remember_language(message.room_id, message.person_id, asked)
        admin = ctx.settings.is_admin(message.person_email)
        kb = ctx.knowledge.kb_for(asked)
        with using_language(asked):
            card = cards.help_card(kb, admin, thread_id=_thread(message), admin_commands=_admin_commands())
        return Reply(card, "help")
    r = route(text)
    handler = commands.get(r.kind)
    assert handler is not None, f"no handler for {r.kind!r}"  # test_every_route_kind_has_a_handler holds this
    # Commands answer in the conversation's language (the helpdesk space's in that space); triage in the
    # message's own when it says.
    with using_language(ctx.reply_language(message.room_id, message.person_id)):
        return await handler(r, message, ctx)


def _thread(message: Message) -> str:
    return message.parent_id or message.id


@commands.register("triage")
async def on_triage(r: Route, message: Message, ctx: BotContext) -> Reply:
    knowledge = ctx.knowledge
    # The message's own language, else the conversation's: "ja, immer noch" is too short to tell.
    lang = message_language(r.text, knowledge.index) or ctx.language_of(message.room_id, message.person_id)
    ctx.remember_language(message.room_id, message.person_id, lang)
    result = triage(r.text, knowledge.index_for(lang))
    with using_language(lang):
        card = cards.build(result, knowledge.kb_for(lang), _thread(message), r.text, message.id)
    return Reply(card, f"triage-{result.outcome}", result)


@commands.register("escalate")
async def on_escalate(r: Route, message: Message, ctx: BotContext) -> Reply:
    existing = await ctx.store.open_ticket_in_thread(message.room_id, _thread(message))
    if existing is not None:  # a second escalation points to the first
        return Reply(cards.text_message(tickets.already_open(existing)), "ticket-exists")
    return Reply(cards.escalation_card(_thread(message), None, message.id), "escalation")


@commands.register("my_tickets", "tickets")
async def on_list_tickets(r: Route, message: Message, ctx: BotContext) -> Reply:
    return Reply(await tickets.list_command(ctx, message, mine=r.kind == "my_tickets"), "tickets")


@commands.register("ticket")
async def on_show_ticket(r: Route, message: Message, ctx: BotContext) -> Reply:
    return Reply(await tickets.show_command(ctx, message, r.ticket), "ticket")


def _admin_only(command: Command) -> Command:
    async def guarded(r: Route, message: Message, ctx: BotContext) -> Reply:
        if not ctx.settings.is_admin(message.person_email):
            return Reply(cards.refusal(_(ADMIN_ONLY)), "refusal")
        return await command(r, message, ctx)

    return guarded


@commands.register("stats")
@_admin_only
async def on_stats(r: Route, message: Message, ctx: BotContext) -> Reply:
    since = datetime.now(UTC) - timedelta(days=r.days)
    stats = await ctx.store.stats(since=since)
    per_day = await ctx.store.daily_counts(since)
    # Drawing takes tens of milliseconds of CPU: off the event loop, where it would stall every other event.
    png = await asyncio.to_thread(stats_chart, per_day, r.days)
    chart = Upload(cards.text_message(chart_caption(r.days)), FileUpload(CHART_FILENAME, CHART_TYPE, png))
    return Reply(cards.stats_card(stats, r.days, ctx.knowledge.kb), "stats", upload=chart)


def chart_caption(days: int) -> str:
    return (
        f"The last {days} day{'s' if days != 1 else ''}, per day: messages, confident answers, "
        "“Yes, this helped” and escalations."
    )


@commands.register("unmatched")
@_admin_only
async def on_unmatched(r: Route, message: Message, ctx: BotContext) -> Reply:
    return Reply(cards.unmatched_list(await ctx.store.unmatched(limit=20)), "unmatched")


@commands.register("gaps")
@_admin_only
async def on_gaps(r: Route, message: Message, ctx: BotContext) -> Reply:
    questions = await ctx.store.gap_questions(since=datetime.now(UTC) - timedelta(days=r.days))
    lexicon = ctx.knowledge.index.lexicon
    # Comparing every question with every other is CPU work: off the event loop.
    found = await asyncio.to_thread(find_gaps, questions, lexicon, limit=GAPS_SHOWN)
    return Reply(cards.gaps_card(found, r.days, len(questions), ctx.knowledge.kb), "gaps")


@commands.register("reload")
@_admin_only
async def on_reload(r: Route, message: Message, ctx: BotContext) -> Reply:
    return Reply(await reload_everywhere(ctx, message.person_email), "reload")


@commands.register("setup_next", "setup_previous")
async def on_setup_page_turn(r: Route, message: Message, ctx: BotContext) -> Reply:
    seen = ctx.setup_pages.get((message.room_id, message.person_id))
    if seen is None:
        start = _("Send “{command}” to start the setup guide.").format(command="okta setup")
        return Reply(cards.text_message(start), "setup")
    page = seen + (1 if r.kind == "setup_next" else -1)
    return _setup_page(ctx, message.room_id, message.person_id, page, _thread(message))


@commands.register("setup")
async def on_setup(r: Route, message: Message, ctx: BotContext) -> Reply:
    page = r.step // SETUP_PAGE_SIZE
    return _setup_page(ctx, message.room_id, message.person_id, page, _thread(message))


@commands.register("empty", "help")
async def on_help(r: Route, message: Message, ctx: BotContext) -> Reply:
    admin = ctx.settings.is_admin(message.person_email)
    kb = ctx.knowledge.kb_for(current_language())
    card = cards.help_card(kb, admin, thread_id=_thread(message), admin_commands=_admin_commands())
    return Reply(card, "help")


ADMIN_ONLY = N_(
    "Sorry, that command is for the bot's admins. Ask your Webex administrator if you need the numbers."
)
GAPS_SHOWN = 5
# The commands are English words whatever the language (the router knows no others); what they do is not.
ADMIN_COMMANDS = (
    ("stats [7d|30d]", N_("how the bot is doing: answers, feedback, deflection, escalations, tickets")),
    ("gaps [7d|30d]", N_("what the knowledge is missing: similar unanswered questions, largest group first")),
    ("unmatched", N_("the latest questions without a confident answer (where the knowledge has gaps)")),
    ("reload knowledge", N_("re-read the knowledge files; on any error the current knowledge stays")),
)


def _admin_commands() -> list[tuple[str, str]]:
    return [(command, _(what)) for command, what in ADMIN_COMMANDS]


def _setup_page(ctx: BotContext, room_id: str, person_id: str, page: int, thread_id: str) -> Reply:
    kb = ctx.knowledge.kb_for(current_language())
    guide = kb.setup_guide
    pages = max(1, -(-len(guide.steps) // SETUP_PAGE_SIZE)) if guide else 1
    page = min(max(page, 0), pages - 1)
    ctx.remember_setup_page(room_id, person_id, page)
    return Reply(cards.setup_guide_card(kb, page, thread_id, SETUP_PAGE_SIZE), "setup")


def _outcome_label(outcome: str) -> str:
    return {"fix": "confident", "clarify": "clarify"}.get(outcome, "none")


async def on_attachment_action_created(envelope: WebhookEnvelope, event: InboxEvent, ctx: BotContext) -> None:
    started = time.monotonic()
    data = envelope.action_data()
    if data.person_id == ctx.identity.id:
        ctx.metrics.events_ignored.labels("self").inc()
        return

    async def thread_of_card() -> tuple[str, str | None]:
        card = await ctx.webex.get_message(data.message_id)
        return card.room_id, (card.parent_id or card.id) if card.room_type == "group" else None

    if await over_limit(ctx, event, data.person_id, thread_of_card):
        return
    action = await ctx.webex.get_attachment_action(data.id)
    submit = cards.parse_submit(action.inputs)
    # What the person typed was too long or blank (or the card sent too much): they are told, once the card
    # has been checked below. Anything else refused is forged or stale.
    problem = cards.submit_problem(action.inputs) if submit is None else None
    if submit is None and problem is None:
        # Forged or stale: say nothing to the sender, leave a trace for us.
        keys = (
            sorted(map(str, action.inputs))[:10]
            if isinstance(action.inputs, dict)
            else type(action.inputs).__name__
        )
        log.warning(
            "card submit %s from %s refused: unknown verb or bad fields (%s)",
            action.id,
            action.person_id,
            keys,
        )
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    try:
        card_message = await ctx.webex.get_message(action.message_id)
    except WebexNotFound:
        log.warning("card submit %s refused: its card %s no longer exists", action.id, action.message_id)
        ctx.metrics.events_ignored.labels("stale-submit").inc()
        return
    if card_message.person_id != ctx.identity.id or card_message.room_id != action.room_id:
        log.warning(
            "card submit %s points at message %s that the bot did not send", action.id, action.message_id
        )
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    # The thread comes from the card itself, never from the submit: a forged thread id must not steer replies.
    card_thread = card_message.parent_id or card_message.id
    if submit is None:
        assert problem is not None
        log.info("card submit %s from %s refused: %s input %r", action.id, action.person_id, *problem)
        where = card_thread if card_message.room_type == "group" else None
        with using_language(ctx.reply_language(action.room_id, action.person_id)):
            told = cards.text_message(input_problem(problem[0]))
        await post_reply(ctx, event, action.room_id, where, told, kind="input-refused")
        return
    claimed_thread = getattr(submit, "thread_id", None)
    if card_message.room_type == "group" and claimed_thread is not None and claimed_thread != card_thread:
        log.warning(
            "card submit %s names thread %s but its card is in %s", action.id, claimed_thread, card_thread
        )
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    # Direct spaces: the bot's cards are not threaded there, so the thread is the person's message; it must be
    # one of this room's, or feedback and tickets would land in someone else's conversation.
    if (
        card_message.room_type != "group"
        and claimed_thread not in (None, card_thread)
        and not await _in_room(ctx, claimed_thread or "", action.room_id)
    ):
        log.warning("card submit %s names thread %s, which is not in its room", action.id, claimed_thread)
        ctx.metrics.events_ignored.labels("forged-submit").inc()
        return
    parent = card_thread if card_message.room_type == "group" else None
    click = Click(ctx, event, Effects(ctx.store, event.event_id), action, parent)
    handler = submits.get(type(submit))
    assert handler is not None, f"no handler for {type(submit).__name__}"  # a test holds every submit type
    # A click is answered in the language the person last wrote in (the helpdesk space's in that space).
    with using_language(ctx.reply_language(action.room_id, action.person_id)):
        await handler(submit, click)
    log.info("card submit %s: %s, %.0f ms", action.id, submit.verb, (time.monotonic() - started) * 1000)


def input_problem(problem: cards.InputProblem) -> str:
    if problem == "too_long":
        return _(
            "That is longer than {limit} characters, the most I take. Please shorten it and send it again."
        ).format(limit=cards.MAX_NOTE_CHARS)
    if problem == "blank":
        return _("That was empty. Please write something in the box first, then send it again.")
    return _(
        "That card sent more than {limit} fields, more than I take. Please use the card as I sent it."
    ).format(limit=cards.MAX_SUBMIT_KEYS)


async def _in_room(ctx: BotContext, message_id: str, room_id: str) -> bool:
    try:
        return (await ctx.webex.get_message(message_id)).room_id == room_id
    except WebexNotFound:
        return False


@submits.register(FeedbackData)
async def on_feedback(submit: FeedbackData, click: Click) -> None:
    new = await click.ctx.store.record_feedback(
        action_id=click.action.id,
        person_id=click.action.person_id,
        article_id=submit.article_id,
        helpful=submit.helpful,
        thread_id=submit.thread_id,
    )
    if new and submit.helpful:
        kb = click.ctx.knowledge.kb_for(current_language())
        await click.reply(cards.feedback_ack(True, kb), kind="feedback")
    elif new:
        # "No, still stuck" is the way to a person: offer the helpdesk straight away.
        await tickets.offer_escalation(click, submit.thread_id, submit.article_id, None)


@submits.register(ShowData)
async def on_show(submit: ShowData, click: Click) -> None:
    kb = click.ctx.knowledge.kb_for(current_language())
    article = kb.article(submit.article_id)
    if article is None:
        reply = cards.refusal(_("That article is no longer in the knowledge base. Try asking again."))
    else:
        reply = cards.article_card(article, kb, submit.thread_id)
    await click.reply(reply, kind="article")


@submits.register(SetupPageData)
async def on_setup_page(submit: SetupPageData, click: Click) -> None:
    action = click.action
    page = _setup_page(click.ctx, action.room_id, action.person_id, submit.page, submit.thread_id)
    await click.reply(page.message, kind="setup")


@submits.register(EscalateData)
async def on_escalate_click(submit: EscalateData, click: Click) -> None:
    await tickets.offer_escalation(click, submit.thread_id, submit.article_id, submit.origin_id)


async def tell_failure(event: InboxEvent, ctx: BotContext) -> None:
    """After the last retry: an honest short message, when we know where to send it."""
    if event.resource != "messages":
        return  # "your last message" is the wrong thing to say after a button press; the log has it
    try:
        envelope = WebhookEnvelope.model_validate(event.payload)
        room_id = envelope.data.get("roomId")
        person_id = envelope.data.get("personId")
        if not isinstance(room_id, str) or event.reply_message_id:
            return
        parent: str | None = None
        if envelope.data.get("roomType") == "group":
            parent = await _thread_of_event(ctx, event.event_id, str(envelope.data.get("id", "")))
            if parent is None:
                # Not top-level in a group space, where it would read as addressed to everyone.
                log.info("event %s: its message is gone and so is its thread; no apology", event.event_id)
                return
        with using_language(ctx.reply_language(room_id, person_id if isinstance(person_id, str) else "")):
            msg = cards.text_message(
                _(
                    "Sorry, I couldn't answer your last message because of a problem on my side. "
                    "Please try again later or contact the helpdesk."
                )
            )
        await ctx.webex.post_message(msg.to_webex(room_id=room_id, parent_id=parent))
    except Exception:  # best effort: the failure is already logged and stored
        log.exception("could not tell the user about failed event %s", event.event_id)


async def _thread_of_event(ctx: BotContext, event_id: str, message_id: str) -> str | None:
    """The thread of a message that could not be answered: as triage recorded it, else as Webex has it."""
    record = await ctx.store.get_triage(event_id)
    if record is not None and record.thread_id and record.thread_id != message_id:
        return record.thread_id  # a reply in a thread whose first message may still be there
    try:
        message = await ctx.webex.get_message(message_id)
    except WebexError:
        return None
    return message.parent_id or message.id
