"""The helpdesk handoff: file tickets with full context, let helpdesk members work them, tell the requester."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot import cards
from bot.cards import (
    AnswerInfoData,
    AskInfoData,
    CancelTicketData,
    ClaimData,
    FileTicketData,
    OutgoingMessage,
    ResolveData,
    TicketFixedData,
)
from bot.context import BotContext, Click, Effects, post_once
from bot.dispatch import Router
from bot.i18n import N_, _, using_language
from bot.models import Message, Person
from bot.redact import redact
from bot.store import Ticket, TicketChange, TicketRefused
from bot.triage import message_language

log = logging.getLogger(__name__)

TRANSITION = "transition"  # the event-effect step that marks a ticket change as done

TRANSCRIPT_LINES = 10

SubmitHandler = Callable[..., Awaitable[None]]
# The ticket verbs of the card-submit table (handlers.py joins it to its own).
submits: Router[type, SubmitHandler] = Router()


async def offer_escalation(
    click: Click, thread_id: str, article_id: str | None, origin_id: str | None
) -> None:
    """Ask for the optional note; nothing is filed until the person presses "Send to the helpdesk"."""
    existing = await click.ctx.store.open_ticket_in_thread(click.action.room_id, click.parent or thread_id)
    if existing is not None:
        await click.reply(cards.text_message(already_open(existing)), kind="ticket-exists")
        return
    await click.reply(cards.escalation_card(thread_id, article_id, origin_id), kind="escalation")


def already_open(ticket: Ticket) -> str:
    return _(
        "{number} is already open for this conversation, and the helpdesk has it: they will answer here. "
        "Send “ticket {number}” to see where it stands."
    ).format(number=ticket.number)


def too_many(cap: int) -> str:
    return _(
        "You have opened {cap} tickets in the last hour, the most I can file. The helpdesk has them; "
        "send “my tickets” to see them, and please wait for their answer."
    ).format(cap=cap)


@submits.register(FileTicketData)
async def on_file_ticket(submit: FileTicketData, click: Click) -> None:
    ctx, action, parent_id = click.ctx, click.action, click.parent
    kb = ctx.knowledge.kb
    person = await ctx.webex.get_person(action.person_id)
    record = await ctx.store.get_triage(submit.origin_id) if submit.origin_id else None
    if record is not None and (record.person_id != action.person_id or record.room_id != action.room_id):
        # A forged origin must not pull someone else's message into this ticket.
        log.warning(
            "file_ticket %s names origin %s of another person or room; ignored", action.id, submit.origin_id
        )
        record = None
    transcript = await ctx.store.recent_messages(action.room_id, parent_id, limit=TRANSCRIPT_LINES)
    article_ids = list(dict.fromkeys(a for a in (submit.article_id, record.top_id if record else None) if a))
    article_ids = [a for a in article_ids if a in kb.articles]
    steps = [s.text for s in kb.articles[article_ids[0]].steps] if article_ids else []
    original = record.text if record else next((t["text"] for t in transcript if t["who"] != "bot"), "")
    try:
        ticket, created = await ctx.store.create_ticket(
            # The submit's id: a redelivered or retried click files one ticket, not two.
            dedupe_key=action.id,
            requester_id=action.person_id,
            requester_email=person.emails[0] if person.emails else "",
            requester_name=person.display_name or (person.emails[0] if person.emails else "unknown"),
            room_id=action.room_id,
            # The conversation's thread (a message id also in direct spaces): stats link feedback and tickets by it.
            thread_id=parent_id or submit.thread_id,
            original_text=original,
            codes=list(record.codes) if record else [],
            articles=article_ids,
            steps_suggested=steps,
            note=redact(submit.note.strip()) or None,
            transcript=transcript,
            # The card's thread in a group space, None in a direct one: notices later go there without asking.
            reply_parent=parent_id,
            # Forged or repeated submits: one open ticket per thread, and a cap per person.
            one_per_thread=True,
            hourly_cap=ctx.settings.tickets_per_hour,
        )
    except TicketRefused as refused:
        log.warning("file_ticket %s by %s refused: %s", action.id, action.person_id, refused)
        text = already_open(refused.existing) if refused.existing else too_many(refused.cap)
        await click.reply(cards.text_message(text), kind="ticket-refused")
        return
    if created:
        log.info("ticket %s filed by %s", ticket.number, action.person_id)
    helpdesk_room = ctx.settings.helpdesk_room_id
    if helpdesk_room and not ticket.helpdesk_message_id:
        with using_language(ctx.settings.helpdesk_language):
            card = cards.ticket_card(ticket, kb)
        card_id = await post_once(
            ctx, click.effects, helpdesk_room, None, card, kind="ticket", step="ticket-card"
        )
        await ctx.store.set_helpdesk_message(ticket.number, card_id)
    elif not helpdesk_room:
        log.warning("ticket %s filed but HELPDESK_ROOM_ID is not set: nobody is told", ticket.number)
    await click.reply(
        cards.ticket_filed_card(ticket, submit.thread_id, bool(helpdesk_room)), kind="ticket-filed"
    )


def _requester_language(ctx: BotContext, ticket: Ticket) -> str:
    """The language the requester last wrote in; after a restart or on another replica, their ticket's."""
    known = ctx.languages.get((ticket.room_id, ticket.requester_id))
    return (
        known or message_language(ticket.original_text, ctx.knowledge.index) or ctx.settings.default_language
    )


async def _tell_requester(click: Click, ticket: Ticket, message: OutgoingMessage, kind: str) -> None:
    await post_once(
        click.ctx, click.effects, ticket.room_id, ticket.reply_parent, message, kind=kind, step="requester"
    )


async def _tell_helpdesk(click: Click, ticket: Ticket, markdown: str, kind: str) -> None:
    """Post `markdown` (written in HELPDESK_LANGUAGE) under the ticket's card in the helpdesk space."""
    room = click.ctx.settings.helpdesk_room_id
    if room:
        message = cards.text_message(markdown)
        await post_once(
            click.ctx, click.effects, room, ticket.helpdesk_message_id, message, kind=kind, step="helpdesk"
        )


async def _transition(
    ctx: BotContext, effects: Effects, number: str, change: Callable[[], Awaitable[TicketChange | None]]
) -> TicketChange | None:
    """Run a ticket transition once per event: a retry after a crash resumes with the notices it missed."""
    if TRANSITION in await effects.known():
        ticket = await ctx.store.get_ticket(number)
        return None if ticket is None else TicketChange(ok=True, ticket=ticket)
    result = await change()
    if result is not None and result.ok:
        await effects.record(TRANSITION, result.ticket.number)
    return result


# --- The helpdesk's verbs (Claim, Resolve, Ask for info on the ticket card) ---------------------------------


async def _helpdesk_member(click: Click, verb: str, number: str) -> Person | None:
    """The helpdesk member who pressed the button; anyone else is refused, with a reply under the card."""
    ctx, action = click.ctx, click.action
    room = ctx.settings.helpdesk_room_id
    if room and action.room_id == room and await ctx.members.is_member(ctx.webex, room, action.person_id):
        return await ctx.webex.get_person(action.person_id)
    log.warning("ticket action %s on %s by non-member %s refused", verb, number, action.person_id)
    # In the card's thread (click.parent), not under the card: a card that is itself a reply takes none.
    refusal = cards.refusal(_("Sorry, only members of the helpdesk space can work on tickets."))
    await click.reply(refusal, kind="refusal")
    return None


def _name(person: Person) -> str:
    return person.display_name or (person.emails[0] if person.emails else "someone")


async def _helpdesk_change(
    click: Click, number: str, change: Callable[[], Awaitable[TicketChange | None]]
) -> Ticket | None:
    """Apply one helpdesk transition; say so under the card when there is no such ticket or nothing changed."""
    result = await _transition(click.ctx, click.effects, number, change)
    if result is None:
        missing = _("I can't find {number}.").format(number=number)
        await click.reply(
            cards.refusal(missing),
            kind="refusal",
        )
        return None
    ticket = result.ticket
    if result.ok:
        return ticket
    status = cards.status_label(ticket.status)
    if ticket.status == "claimed" and ticket.assignee_id == click.action.person_id:
        text = _("You already have {number}.").format(number=ticket.number)
    elif ticket.assignee_name:
        text = _("{number} is already {status} by {name}. Nothing changed.").format(
            number=ticket.number, status=status, name=cards.escape_user_text(ticket.assignee_name, 60)
        )
    else:
        text = _("{number} is already {status}. Nothing changed.").format(number=ticket.number, status=status)
    await click.reply(
        cards.text_message(text),
        kind="ticket-noop",
    )
    return None


@submits.register(ClaimData)
async def on_claim(submit: ClaimData, click: Click) -> None:
    person = await _helpdesk_member(click, submit.verb, submit.number)
    if person is None:
        return
    name = _name(person)
    ticket = await _helpdesk_change(
        click,
        submit.number,
        lambda: click.ctx.store.claim_ticket(
            submit.number, assignee_id=click.action.person_id, assignee_name=name
        ),
    )
    if ticket is None:
        return
    claimed = _("{name} claimed {number}.").format(
        name=cards.escape_user_text(name, 60), number=ticket.number
    )
    await click.reply(cards.text_message(claimed), kind="ticket-claimed")
    first = person.first_name or name.split(" ")[0]
    with using_language(_requester_language(click.ctx, ticket)):
        notice = _("{name} from the helpdesk is on it ({number}).").format(
            name=cards.escape_user_text(first, 40), number=ticket.number
        )
    await _tell_requester(click, ticket, cards.text_message(notice), kind="requester-claimed")


@submits.register(ResolveData)
async def on_resolve(submit: ResolveData, click: Click) -> None:
    person = await _helpdesk_member(click, submit.verb, submit.number)
    if person is None:
        return
    name = _name(person)
    resolution = redact(submit.resolution.strip())
    ticket = await _helpdesk_change(
        click,
        submit.number,
        lambda: click.ctx.store.resolve_ticket(
            submit.number, by_id=click.action.person_id, by_name=name, resolution=resolution
        ),
    )
    if ticket is None:
        return
    resolved = _("{name} resolved {number}.").format(
        name=cards.escape_user_text(name, 60), number=ticket.number
    )
    await click.reply(cards.text_message(resolved), kind="ticket-resolved")
    with using_language(_requester_language(click.ctx, ticket)):
        card = cards.ticket_resolved_card(ticket, name, ticket.thread_id or ticket.room_id)
    await _tell_requester(click, ticket, card, kind="requester-resolved")


@submits.register(AskInfoData)
async def on_ask_info(submit: AskInfoData, click: Click) -> None:
    person = await _helpdesk_member(click, submit.verb, submit.number)
    if person is None:
        return
    name = _name(person)
    question = redact(submit.question.strip())
    ticket = await _helpdesk_change(
        click,
        submit.number,
        lambda: click.ctx.store.request_info(
            submit.number, by_id=click.action.person_id, by_name=name, question=question
        ),
    )
    if ticket is None:
        return
    sent = _("Question sent to {name}.").format(name=cards.escape_user_text(ticket.requester_name, 60))
    await click.reply(cards.text_message(sent), kind="ticket-question")
    with using_language(_requester_language(click.ctx, ticket)):
        # The question as stored: redacted before it reaches the requester too.
        card = cards.info_request_card(ticket, name, question, ticket.thread_id or ticket.room_id)
    await _tell_requester(click, ticket, card, kind="requester-question")


# --- The requester's verbs (on the cards the bot sent them) ---------------------------------------------------


async def _requester_ticket(click: Click, verb: str, number: str) -> Ticket | None:
    ticket = await click.ctx.store.get_ticket(number)
    if ticket is not None and ticket.requester_id == click.action.person_id:
        return ticket
    # Someone else's ticket (or a forged number): no details, no change.
    log.warning("ticket action %s on %s by non-requester %s refused", verb, number, click.action.person_id)
    await click.reply(
        cards.refusal(_("Sorry, I can only change tickets you opened yourself.")), kind="refusal"
    )
    return None


async def _requester_change(
    click: Click,
    ticket: Ticket,
    change: Callable[[], Awaitable[TicketChange | None]],
    *,
    number: str,
    helpdesk_notice: str,
    done: str,
    refused: str,
    kinds: tuple[str, str],
) -> None:
    """Reopen and cancel: one transition, the helpdesk told under its card, the requester answered.

    The texts are msgids, formats of {number} (as the card gave it) and {status} (the ticket's before the
    change): the notice in the helpdesk's language, the answer in the requester's."""
    notice_kind, reply_kind = kinds
    result = await _transition(click.ctx, click.effects, number, change)
    if result is not None and result.ok:
        with using_language(click.ctx.settings.helpdesk_language):
            notice = _(helpdesk_notice).format(number=result.ticket.number)
        await _tell_helpdesk(click, result.ticket, notice, kind=notice_kind)
        text = done
    else:
        text = refused
    answer = _(text).format(number=number, status=cards.status_label(ticket.status))
    await click.reply(cards.text_message(answer), kind=reply_kind)


@submits.register(TicketFixedData)
async def on_ticket_fixed(submit: TicketFixedData, click: Click) -> None:
    ticket = await _requester_ticket(click, submit.verb, submit.number)
    if ticket is None:
        return
    if submit.fixed:
        thanks = cards.text_message(_("Great, glad it's fixed. Thanks for telling me."))
        await click.reply(thanks, kind="ticket-fixed")
        return
    await _requester_change(
        click,
        ticket,
        lambda: click.ctx.store.reopen_ticket(submit.number, requester_id=click.action.person_id),
        number=submit.number,
        helpdesk_notice=N_("{number} was reopened: the requester says it is still broken."),
        done=N_("Sorry about that. I reopened {number}; the helpdesk will pick it up again here."),
        refused=N_("{number} is {status}; nothing to reopen."),
        kinds=("ticket-reopened", "ticket-reopen"),
    )


@submits.register(CancelTicketData)
async def on_cancel_ticket(submit: CancelTicketData, click: Click) -> None:
    ticket = await _requester_ticket(click, submit.verb, submit.number)
    if ticket is None:
        return
    await _requester_change(
        click,
        ticket,
        lambda: click.ctx.store.cancel_ticket(submit.number, requester_id=click.action.person_id),
        number=submit.number,
        helpdesk_notice=N_("{number} was cancelled by the requester."),
        done=N_("{number} is cancelled."),
        refused=N_("{number} is {status} and can't be cancelled now."),
        kinds=("ticket-cancelled", "ticket-cancel"),
    )


@submits.register(AnswerInfoData)
async def on_answer_info(submit: AnswerInfoData, click: Click) -> None:
    ticket = await _requester_ticket(click, submit.verb, submit.number)
    if ticket is None:
        return
    answer = redact(submit.answer.strip())
    if TRANSITION not in await click.effects.known():
        answered = await click.ctx.store.answer_info(
            submit.number, requester_id=click.action.person_id, who=ticket.requester_name, answer=answer
        )
        if answered is None:
            # Only a question the helpdesk asked, and only once: no unsolicited posts in their space.
            log.warning("answer_info %s on %s refused: no open question", click.action.id, ticket.number)
            text = _("There is no open question from the helpdesk on {number}, so I kept this to myself.")
            await click.reply(
                cards.text_message(text.format(number=ticket.number)), kind="ticket-no-question"
            )
            return
        await click.effects.record(TRANSITION, ticket.number)
    with using_language(click.ctx.settings.helpdesk_language):
        notice = _("Answer from {name} on {number}: “{answer}”").format(
            name=cards.escape_user_text(ticket.requester_name, 60),
            number=ticket.number,
            answer=cards.escape_user_text(answer, 1500),
        )
    await _tell_helpdesk(click, ticket, notice, kind="ticket-answer")
    await click.reply(
        cards.text_message(_("Thanks, I passed your answer to the helpdesk.")), kind="ticket-answered"
    )


async def list_command(ctx: BotContext, message: Message, *, mine: bool) -> OutgoingMessage:
    """`my tickets` for anyone; `tickets` lists the queue in the helpdesk space, and one's own elsewhere."""
    room = ctx.settings.helpdesk_room_id
    if (
        not mine
        and room
        and message.room_id == room
        and await ctx.members.is_member(ctx.webex, room, message.person_id)
    ):
        return cards.ticket_list(
            await ctx.store.list_tickets(("open", "claimed")), _("Open and claimed tickets")
        )
    return cards.ticket_list(await ctx.store.tickets_for_requester(message.person_id), _("Your tickets"))


async def show_command(ctx: BotContext, message: Message, number: str) -> OutgoingMessage:
    ticket = await ctx.store.get_ticket(number)
    room = ctx.settings.helpdesk_room_id
    staff = (
        bool(room)
        and message.room_id == room
        and await ctx.members.is_member(ctx.webex, room or "", message.person_id)
    )
    if ticket is None or not (staff or ticket.requester_id == message.person_id):
        missing = _("I can't find a ticket {number} of yours. Send “{command}” to list them.")
        return cards.text_message(missing.format(number=number, command="my tickets"))
    return cards.ticket_summary(ticket)
