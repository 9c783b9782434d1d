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
from bot.context import BotContext, post_once, post_reply
from bot.models import AttachmentAction, Message
from bot.redact import redact
from bot.store import InboxEvent, Ticket, TicketChange
from bot.webex import WebexNotFound

log = logging.getLogger(__name__)

TRANSITION = "transition"  # the event-effect step that marks a ticket change as done

TRANSCRIPT_LINES = 10

HelpdeskVerb = ClaimData | ResolveData | AskInfoData
RequesterVerb = TicketFixedData | AnswerInfoData | CancelTicketData


async def offer_escalation(
    ctx: BotContext,
    event: InboxEvent,
    room_id: str,
    parent_id: str | None,
    thread_id: str,
    article_id: str | None,
    origin_id: str | None,
) -> None:
    """Ask for the optional note; nothing is filed until the person presses "Send to the helpdesk"."""
    card = cards.escalation_card(thread_id, article_id, origin_id)
    await post_reply(ctx, event, room_id, parent_id, card, kind="escalation")


async def file_ticket(
    ctx: BotContext,
    event: InboxEvent,
    action: AttachmentAction,
    submit: FileTicketData,
    parent_id: str | None,
) -> None:
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
    )
    if created:
        log.info("ticket %s filed by %s", ticket.number, action.person_id)
    helpdesk_room = ctx.settings.helpdesk_room_id
    if helpdesk_room and not ticket.helpdesk_message_id:
        card = cards.ticket_card(ticket, kb)
        posted = await post_once(
            ctx, helpdesk_room, None, card, kind="ticket", event=event, step="ticket-card"
        )
        card_id = posted.id if posted else (await ctx.store.effects(event.event_id))["ticket-card"]
        await ctx.store.set_helpdesk_message(ticket.number, card_id)
    elif not helpdesk_room:
        log.warning("ticket %s filed but HELPDESK_ROOM_ID is not set: nobody is told", ticket.number)
    confirmation = cards.ticket_filed_card(ticket, submit.thread_id, bool(helpdesk_room))
    await post_reply(ctx, event, action.room_id, parent_id, confirmation, kind="ticket-filed")


async def _requester_parent(ctx: BotContext, ticket: Ticket) -> str | None:
    """Threaded in a group space, plain in a direct one; the thread's first message says which."""
    if not ticket.thread_id:
        return None
    try:
        first = await ctx.webex.get_message(ticket.thread_id)
    except WebexNotFound:
        return None
    return ticket.thread_id if first.room_type == "group" else None


async def _tell_requester(
    ctx: BotContext, event: InboxEvent, ticket: Ticket, message: OutgoingMessage, kind: str
) -> None:
    parent = await _requester_parent(ctx, ticket)
    await post_once(ctx, ticket.room_id, parent, message, kind=kind, event=event, step="requester")


async def _tell_helpdesk(
    ctx: BotContext, event: InboxEvent, ticket: Ticket, markdown: str, kind: str
) -> None:
    room = ctx.settings.helpdesk_room_id
    if room:
        message = cards.text_message(markdown)
        await post_once(
            ctx, room, ticket.helpdesk_message_id, message, kind=kind, event=event, step="helpdesk"
        )


async def _transition(
    ctx: BotContext, event: InboxEvent, number: str, change: Callable[[], Awaitable[TicketChange | None]]
) -> TicketChange | None:
    """Run a ticket transition once per event: a retry after a crash resumes with the notices it missed."""
    if TRANSITION in await ctx.store.effects(event.event_id):
        ticket = await ctx.store.get_ticket(number)
        return None if ticket is None else TicketChange(ok=True, ticket=ticket)
    result = await change()
    if result is not None and result.ok:
        await ctx.store.record_effect(event.event_id, TRANSITION, result.ticket.number)
    return result


async def on_helpdesk_action(
    ctx: BotContext, event: InboxEvent, action: AttachmentAction, submit: HelpdeskVerb
) -> None:
    room = ctx.settings.helpdesk_room_id
    parent = action.message_id  # answers go under the ticket card
    if (
        not room
        or action.room_id != room
        or not await ctx.members.is_member(ctx.webex, room, action.person_id)
    ):
        log.warning(
            "ticket action %s on %s by non-member %s refused", submit.verb, submit.number, action.person_id
        )
        refusal = cards.refusal("Sorry, only members of the helpdesk space can work on tickets.")
        await post_reply(ctx, event, action.room_id, parent, refusal, kind="refusal")
        return
    person = await ctx.webex.get_person(action.person_id)
    name = person.display_name or (person.emails[0] if person.emails else "someone")
    first = person.first_name or name.split(" ")[0]
    store = ctx.store
    if isinstance(submit, ClaimData):
        change = await _transition(
            ctx,
            event,
            submit.number,
            lambda: store.claim_ticket(submit.number, assignee_id=action.person_id, assignee_name=name),
        )
    elif isinstance(submit, ResolveData):
        resolution = redact(submit.resolution.strip())
        change = await _transition(
            ctx,
            event,
            submit.number,
            lambda: store.resolve_ticket(
                submit.number, by_id=action.person_id, by_name=name, resolution=resolution
            ),
        )
    else:
        question = redact(submit.question.strip())
        change = await _transition(
            ctx,
            event,
            submit.number,
            lambda: store.request_info(
                submit.number, by_id=action.person_id, by_name=name, question=question
            ),
        )
    if change is None:
        await post_reply(
            ctx,
            event,
            action.room_id,
            parent,
            cards.refusal(f"I can't find {submit.number}."),
            kind="refusal",
        )
        return
    ticket = change.ticket
    if not change.ok:
        if (
            isinstance(submit, ClaimData)
            and ticket.assignee_id == action.person_id
            and ticket.status == "claimed"
        ):
            text = f"You already have {ticket.number}."
        else:
            who = (
                f" by {cards.escape_user_text(ticket.assignee_name or '', 60)}"
                if ticket.assignee_name
                else ""
            )
            text = f"{ticket.number} is already {ticket.status}{who}. Nothing changed."
        await post_reply(ctx, event, action.room_id, parent, cards.text_message(text), kind="ticket-noop")
        return
    safe_name = cards.escape_user_text(name, 60)
    if isinstance(submit, ClaimData):
        await post_reply(
            ctx,
            event,
            room,
            parent,
            cards.text_message(f"{safe_name} claimed {ticket.number}."),
            kind="ticket-claimed",
        )
        notice = f"{cards.escape_user_text(first, 40)} from the helpdesk is on it ({ticket.number})."
        await _tell_requester(ctx, event, ticket, cards.text_message(notice), kind="requester-claimed")
    elif isinstance(submit, ResolveData):
        await post_reply(
            ctx,
            event,
            room,
            parent,
            cards.text_message(f"{safe_name} resolved {ticket.number}."),
            kind="ticket-resolved",
        )
        await _tell_requester(
            ctx,
            event,
            ticket,
            cards.ticket_resolved_card(ticket, name, ticket.thread_id or ticket.room_id),
            kind="requester-resolved",
        )
    else:
        await post_reply(
            ctx,
            event,
            room,
            parent,
            cards.text_message(f"Question sent to {cards.escape_user_text(ticket.requester_name, 60)}."),
            kind="ticket-question",
        )
        card = cards.info_request_card(ticket, name, submit.question, ticket.thread_id or ticket.room_id)
        await _tell_requester(ctx, event, ticket, card, kind="requester-question")


async def on_requester_action(
    ctx: BotContext, event: InboxEvent, action: AttachmentAction, submit: RequesterVerb, parent_id: str | None
) -> None:
    ticket = await ctx.store.get_ticket(submit.number)
    if ticket is None or ticket.requester_id != action.person_id:
        # Someone else's ticket (or a forged number): no details, no change.
        log.warning(
            "ticket action %s on %s by non-requester %s refused", submit.verb, submit.number, action.person_id
        )
        refusal = cards.refusal("Sorry, I can only change tickets you opened yourself.")
        await post_reply(ctx, event, action.room_id, parent_id, refusal, kind="refusal")
        return
    if isinstance(submit, TicketFixedData):
        if submit.fixed:
            await post_reply(
                ctx,
                event,
                action.room_id,
                parent_id,
                cards.text_message("Great, glad it's fixed. Thanks for telling me."),
                kind="ticket-fixed",
            )
            return
        store = ctx.store
        change = await _transition(
            ctx,
            event,
            submit.number,
            lambda: store.reopen_ticket(submit.number, requester_id=action.person_id),
        )
        if change is not None and change.ok:
            await _tell_helpdesk(
                ctx,
                event,
                change.ticket,
                f"{change.ticket.number} was reopened: the requester says it is still broken.",
                kind="ticket-reopened",
            )
            text = f"Sorry about that. I reopened {submit.number}; the helpdesk will pick it up again here."
        else:
            text = f"{submit.number} is {ticket.status}; nothing to reopen."
        await post_reply(
            ctx, event, action.room_id, parent_id, cards.text_message(text), kind="ticket-reopen"
        )
    elif isinstance(submit, AnswerInfoData):
        answer = redact(submit.answer.strip())
        if TRANSITION not in await ctx.store.effects(event.event_id):
            await ctx.store.add_transcript(submit.number, ticket.requester_name, answer)
            await ctx.store.record_effect(event.event_id, TRANSITION, ticket.number)
        await _tell_helpdesk(
            ctx,
            event,
            ticket,
            f"Answer from {cards.escape_user_text(ticket.requester_name, 60)} on {ticket.number}: "
            f"“{cards.escape_user_text(answer, 1500)}”",
            kind="ticket-answer",
        )
        await post_reply(
            ctx,
            event,
            action.room_id,
            parent_id,
            cards.text_message("Thanks, I passed your answer to the helpdesk."),
            kind="ticket-answered",
        )
    else:
        store = ctx.store
        change = await _transition(
            ctx,
            event,
            submit.number,
            lambda: store.cancel_ticket(submit.number, requester_id=action.person_id),
        )
        if change is not None and change.ok:
            await _tell_helpdesk(
                ctx,
                event,
                change.ticket,
                f"{change.ticket.number} was cancelled by the requester.",
                kind="ticket-cancelled",
            )
            text = f"{submit.number} is cancelled."
        else:
            text = f"{submit.number} is {ticket.status} and can't be cancelled now."
        await post_reply(
            ctx, event, action.room_id, parent_id, cards.text_message(text), kind="ticket-cancel"
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
            await ctx.store.list_tickets(("open", "claimed")), "Open and claimed tickets"
        )
    return cards.ticket_list(await ctx.store.tickets_for_requester(message.person_id), "Your tickets")


async def show_command(ctx: BotContext, message: Message, number: str) -> OutgoingMessage:
    ticket = await ctx.store.get_ticket(number)
    room = ctx.settings.helpdesk_room_id
    staff = (
        bool(room)
        and message.room_id == room
        and await ctx.members.is_member(ctx.webex, room or "", message.person_id)
    )
    if ticket is None or not (staff or ticket.requester_id == message.person_id):
        return cards.text_message(f"I can't find a ticket {number} of yours. Send “my tickets” to list them.")
    return cards.ticket_summary(ticket)
