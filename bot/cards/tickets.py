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
from bot.i18n import N_, _, pgettext
from bot.knowledge import KnowledgeBase
from bot.store.records import Ticket

SEND_TO_HELPDESK = N_("Send to the helpdesk")
QUESTION_MISSING = N_("Write your question for the requester first.")
ANSWER_MISSING = N_("Write your answer first.")


TRANSCRIPT_LINES = 6


def _user(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    return escape_user_text(text or "", limit)


def _email(address: str) -> str:
    # Webex's own record of the person, not their words: escaped, but not defanged into "alice@example(.)com".
    return escape_user_text(address, 120, defang=False)


def status_label(status: str) -> str:
    """A ticket status as the reader says it (the store keeps the English word)."""
    labels = {
        "open": pgettext("ticket status", "open"),
        "claimed": pgettext("ticket status", "claimed"),
        "resolved": pgettext("ticket status", "resolved"),
        "cancelled": pgettext("ticket status", "cancelled"),
    }
    return labels.get(status, status)


def escalation_card(thread_id: str, article_id: str | None, origin_id: str | None) -> OutgoingMessage:
    """Before filing: an optional one-line note, so the helpdesk does not have to ask first."""
    d = Draft()
    d.heading(_("Hand this to the helpdesk?"))
    d.para(
        _(
            "I'll send the helpdesk what you wrote, what I found and what I suggested. "
            "Anything to add, like what you have already tried? (optional)"
        ),
        clip=False,
    )
    d.form(
        FileTicketData,
        {"thread_id": thread_id, "article_id": article_id, "origin_id": origin_id},
        {"note": Prompt(_("What have you tried? (optional)"))},
        title=_(SEND_TO_HELPDESK),
        positive=True,
    )
    return d.message(footer=_("Use the card to add a note and send it to the helpdesk."))


def ticket_card(ticket: Ticket, kb: KnowledgeBase) -> OutgoingMessage:
    """The helpdesk's view: who, what, the codes, what was tried, the note and the conversation."""
    tried = [kb.articles[a].title for a in ticket.articles if a in kb.articles]

    def compose(budget: Budget) -> OutgoingMessage:
        d = Draft(budget)
        subject = _user(ticket.original_text, 80) or _("help requested")
        d.heading(f"{ticket.number}: {subject}")
        status = status_label(ticket.status)
        facts = [
            (
                _("Status"),
                status + (f" ({_user(ticket.assignee_name, 60)})" if ticket.assignee_name else ""),
            ),
            (_("Who"), f"{_user(ticket.requester_name, 80)} ({_email(ticket.requester_email)})"),
        ]
        if ticket.codes:
            facts.append((_("Codes"), ", ".join(_user(c, 20) for c in ticket.codes[: budget.items])))
        if tried:
            facts.append((_("Bot suggested"), "; ".join(tried[: budget.items])))
        facts.append((_("Note"), _user(ticket.note, 500) or _("(none)")))
        d.facts(facts)
        d.subheading(_("Their message"))
        d.para(_user(ticket.original_text, 600) or _("(no message)"))
        if ticket.steps_suggested:
            d.subheading(_("Steps the bot already gave"))
            # Knowledge text, not user text: trusted, so not escaped (only cut to size).
            d.bullets(list(ticket.steps_suggested), noun="step")
        lines = [f"{_user(t.get('who'), 40)}: {_user(t.get('text'), 200)}" for t in ticket.transcript]
        if lines:
            d.subheading(_("Conversation"))
            d.bullets(lines[-min(TRANSCRIPT_LINES, budget.items) :], noun="line")
        d.submit(_("Claim"), ClaimData(number=ticket.number), positive=True)
        d.actions.append(
            _show_form(
                _("Resolve"),
                ResolveData,
                {"number": ticket.number},
                {"resolution": Prompt(_("What fixed it? (sent to the requester)"))},
                submit=_("Resolve"),
            )
        )
        d.actions.append(
            _show_form(
                _("Ask for info"),
                AskInfoData,
                {"number": ticket.number},
                {"question": Prompt(_("Your question for the requester"), error=_(QUESTION_MISSING))},
                submit=_("Send question"),
            )
        )
        return d.message(footer=_("Claim, resolve or ask for info with the buttons on the card."))

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
    d.heading(_("Ticket {number} is open").format(number=ticket.number))
    if helpdesk_reachable:
        d.para(
            _("The helpdesk has your message and what I found. They will answer in this thread."), clip=False
        )
    else:
        d.para(
            _(
                "I saved your ticket, but no helpdesk space is configured, so please also contact the helpdesk "
                "directly and mention {number}."
            ).format(number=ticket.number),
            clip=False,
        )
    d.para(_("Send “{command}” to see your tickets.").format(command="my tickets"), subtle=True, clip=False)
    d.submit(_("Cancel ticket"), CancelTicketData(number=ticket.number, thread_id=thread_id))
    return d.message()


def info_request_card(ticket: Ticket, asker: str, question: str, thread_id: str) -> OutgoingMessage:
    d = Draft()
    asks = _("{name} from the helpdesk asks about {number}")
    d.heading(asks.format(name=_user(asker, 60), number=ticket.number))
    d.para(_("“{text}”").format(text=_user(question, 800)), clip=False)
    d.form(
        AnswerInfoData,
        {"number": ticket.number, "thread_id": thread_id},
        {"answer": Prompt(_("Your answer"), error=_(ANSWER_MISSING))},
        title=_("Send answer"),
        positive=True,
    )
    return d.message(footer=_("Answer with the card, or reply here."))


def ticket_resolved_card(ticket: Ticket, resolver: str, thread_id: str) -> OutgoingMessage:
    d = Draft()
    d.heading(_("{number} is resolved").format(number=ticket.number))
    resolution = _user(ticket.resolution, 800)
    d.para(
        _("{name} from the helpdesk: “{resolution}”").format(name=_user(resolver, 60), resolution=resolution)
        if resolution
        else _("Resolved by {name}.").format(name=_user(resolver, 60))
    )
    d.para(_("Did this fix it?"), separator=True, clip=False, card_only=True)
    d.submit(
        _("Yes, fixed"), TicketFixedData(number=ticket.number, thread_id=thread_id, fixed=True), positive=True
    )
    d.submit(_("No, still broken"), TicketFixedData(number=ticket.number, thread_id=thread_id, fixed=False))
    return d.message(footer=_("Did this fix it? Answer with the buttons; “No” reopens the ticket."))


def ticket_list(tickets: Sequence[Ticket], title: str) -> OutgoingMessage:
    if not tickets:
        return text_message(f"**{title}**\n\n" + _("None right now."))
    lines = [
        f"- **{t.number}** · {status_label(t.status)}"
        + (f" · {_user(t.assignee_name, 40)}" if t.assignee_name else "")
        + f" · {_user(t.original_text, 80)}"
        for t in tickets
    ]
    return text_message(f"**{title}**\n\n" + "\n".join(lines))


def ticket_summary(ticket: Ticket) -> OutgoingMessage:
    lines = [
        f"**{ticket.number}** · {status_label(ticket.status)}"
        + (f" · {_user(ticket.assignee_name, 40)}" if ticket.assignee_name else ""),
        _("Requester: {name} ({email})").format(
            name=_user(ticket.requester_name, 80), email=_email(ticket.requester_email)
        ),
        _("Message: {text}").format(text=_user(ticket.original_text, 400)),
    ]
    if ticket.codes:
        lines.append(_("Codes: {codes}").format(codes=", ".join(_user(c, 20) for c in ticket.codes)))
    if ticket.note:
        lines.append(_("Note: {text}").format(text=_user(ticket.note, 400)))
    if ticket.resolution:
        lines.append(_("Resolution: {text}").format(text=_user(ticket.resolution, 400)))
    return text_message("\n\n".join(lines))
