"""Builders for the helpdesk handoff: the escalation offer, the helpdesk's ticket card, the requester's cards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bot.cards.draft import Budget, Draft, OutgoingMessage, Prompt, fit, form, text_message
from bot.cards.elements import ActionShowCard, AdaptiveCard
from bot.cards.escape import EXCERPT_CHARS, escape_user_text
from bot.cards.submit import (
    AnswerInfoData,
    AskInfoData,
    CancelTicketData,
    ClaimData,
    FileTicketData,
    Payload,
    ResolveData,
    TicketFixedData,
)
from bot.knowledge import KnowledgeBase
from bot.store.records import Ticket

SEND_TO_HELPDESK = "Send to the helpdesk"
QUESTION_MISSING = "Write your question for the requester first."
ANSWER_MISSING = "Write your answer first."


TRANSCRIPT_LINES = 6


def _user(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    return escape_user_text(text or "", limit)


def escalation_card(thread_id: str, article_id: str | None, origin_id: str | None) -> OutgoingMessage:
    """Before filing: an optional one-line note, so the helpdesk does not have to ask first."""
    d = Draft()
    d.heading("Hand this to the helpdesk?")
    d.para(
        "I'll send the helpdesk what you wrote, what I found and what I suggested. "
        "Anything to add, like what you have already tried? (optional)",
        clip=False,
    )
    d.form(
        FileTicketData,
        {"thread_id": thread_id, "article_id": article_id, "origin_id": origin_id},
        {"note": Prompt("What have you tried? (optional)")},
        title=SEND_TO_HELPDESK,
        positive=True,
    )
    return d.message(footer="Use the card to add a note and send it to the helpdesk.")


def ticket_card(ticket: Ticket, kb: KnowledgeBase) -> OutgoingMessage:
    """The helpdesk's view: who, what, the codes, what was tried, the note and the conversation."""
    tried = [kb.articles[a].title for a in ticket.articles if a in kb.articles]

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        d.heading(f"{ticket.number}: {_user(ticket.original_text, 80) or 'help requested'}")
        facts = [
            (
                "Status",
                ticket.status + (f" ({_user(ticket.assignee_name, 60)})" if ticket.assignee_name else ""),
            ),
            ("Who", f"{_user(ticket.requester_name, 80)} ({_user(ticket.requester_email, 120)})"),
        ]
        if ticket.codes:
            facts.append(("Codes", ", ".join(_user(c, 20) for c in ticket.codes[: budget.items])))
        if tried:
            facts.append(("Bot suggested", "; ".join(tried[: budget.items])))
        facts.append(("Note", _user(ticket.note, 500) or "(none)"))
        d.facts(facts)
        d.subheading("Their message")
        d.para(_user(ticket.original_text, 600) or "(no message)")
        if ticket.steps_suggested:
            d.subheading("Steps the bot already gave")
            # Knowledge text, not user text: trusted, so not escaped (only cut to size).
            d.bullets(list(ticket.steps_suggested), noun="step")
        lines = [f"{_user(t.get('who'), 40)}: {_user(t.get('text'), 200)}" for t in ticket.transcript]
        if lines:
            d.subheading("Conversation")
            d.bullets(lines[-min(TRANSCRIPT_LINES, budget.items) :], noun="line")
        d.submit("Claim", ClaimData(number=ticket.number), positive=True)
        d.actions.append(
            _show_form(
                "Resolve",
                ResolveData,
                {"number": ticket.number},
                {"resolution": Prompt("What fixed it? (sent to the requester)")},
                submit="Resolve",
            )
        )
        d.actions.append(
            _show_form(
                "Ask for info",
                AskInfoData,
                {"number": ticket.number},
                {"question": Prompt("Your question for the requester", error=QUESTION_MISSING)},
                submit="Send question",
            )
        )
        return d.message(footer="Claim, resolve or ask for info with the buttons on the card.")

    return fit(compose)


def _show_form(
    title: str,
    payload: type[Payload],
    values: Mapping[str, Any],
    prompts: Mapping[str, Prompt],
    *,
    submit: str,
) -> ActionShowCard:
    """A button that unfolds the payload's inputs with their own submit button."""
    inputs, button = form(payload, values, prompts, title=submit)
    return ActionShowCard(title=title, card=AdaptiveCard(body=inputs, actions=(button,)))


def ticket_filed_card(ticket: Ticket, thread_id: str, helpdesk_reachable: bool) -> OutgoingMessage:
    """The requester's confirmation, with the number and a way to take it back."""
    d = Draft()
    d.heading(f"Ticket {ticket.number} is open")
    if helpdesk_reachable:
        d.para("The helpdesk has your message and what I found. They will answer in this thread.", clip=False)
    else:
        d.para(
            "I saved your ticket, but no helpdesk space is configured, so please also contact the helpdesk "
            f"directly and mention {ticket.number}.",
            clip=False,
        )
    d.para("Send “my tickets” to see your tickets.", subtle=True, clip=False)
    d.submit("Cancel ticket", CancelTicketData(number=ticket.number, thread_id=thread_id))
    return d.message()


def info_request_card(ticket: Ticket, asker: str, question: str, thread_id: str) -> OutgoingMessage:
    d = Draft()
    d.heading(f"{_user(asker, 60)} from the helpdesk asks about {ticket.number}")
    d.para(f"“{_user(question, 800)}”", clip=False)
    d.form(
        AnswerInfoData,
        {"number": ticket.number, "thread_id": thread_id},
        {"answer": Prompt("Your answer", error=ANSWER_MISSING)},
        title="Send answer",
        positive=True,
    )
    return d.message(footer="Answer with the card, or reply here.")


def ticket_resolved_card(ticket: Ticket, resolver: str, thread_id: str) -> OutgoingMessage:
    d = Draft()
    d.heading(f"{ticket.number} is resolved")
    resolution = _user(ticket.resolution, 800)
    d.para(
        f"{_user(resolver, 60)} from the helpdesk: “{resolution}”"
        if resolution
        else f"Resolved by {_user(resolver, 60)}."
    )
    d.para("Did this fix it?", separator=True, clip=False, card_only=True)
    d.submit(
        "Yes, fixed", TicketFixedData(number=ticket.number, thread_id=thread_id, fixed=True), positive=True
    )
    d.submit("No, still broken", TicketFixedData(number=ticket.number, thread_id=thread_id, fixed=False))
    return d.message(footer="Did this fix it? Answer with the buttons; “No” reopens the ticket.")


def ticket_list(tickets: Sequence[Ticket], title: str) -> OutgoingMessage:
    if not tickets:
        return text_message(f"**{title}**\n\nNone right now.")
    lines = [
        f"- **{t.number}** · {t.status}"
        + (f" · {_user(t.assignee_name, 40)}" if t.assignee_name else "")
        + f" · {_user(t.original_text, 80)}"
        for t in tickets
    ]
    return text_message(f"**{title}**\n\n" + "\n".join(lines))


def ticket_summary(ticket: Ticket) -> OutgoingMessage:
    lines = [
        f"**{ticket.number}** · {ticket.status}"
        + (f" · {_user(ticket.assignee_name, 40)}" if ticket.assignee_name else ""),
        f"Requester: {_user(ticket.requester_name, 80)} ({_user(ticket.requester_email, 120)})",
        f"Message: {_user(ticket.original_text, 400)}",
    ]
    if ticket.codes:
        lines.append("Codes: " + ", ".join(_user(c, 20) for c in ticket.codes))
    if ticket.note:
        lines.append(f"Note: {_user(ticket.note, 400)}")
    if ticket.resolution:
        lines.append(f"Resolution: {_user(ticket.resolution, 400)}")
    return text_message("\n\n".join(lines))
