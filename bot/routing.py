"""Pure message routing: strip the bot's mention, then decide between help, the setup guide and triage."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Literal

from bot.models import Message, Person

# The html of a mention: <spark-mention data-object-type="person" data-object-id="...">Name</spark-mention>.
# Bounded repeats only: the html is user-controlled.
_MENTION = re.compile(
    r"<spark-mention\b[^>]{0,500}?data-object-id=\"([^\"]{1,200})\"[^>]{0,500}>([^<]{0,200})</spark-mention>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^>]{0,500}>")
_SETUP_STEP = re.compile(r"^(?:okta |saml |sso )?(?:setup|set up|configuration|config) step (\d{1,3})$")
_SETUP = re.compile(
    r"^(?:(?:okta|saml|sso|okta saml|okta sso)[ -]?)?(?:setup|set up|set-up|configuration|config|guide|setup guide)$"
)

_TICKET = re.compile(r"^(?:ticket|show ticket|status of|status)\s*#?\s*(?:hd)?[- ]?(\d{1,9})$")
_ESCALATE = frozenset(
    {
        "escalate",
        "talk to a human",
        "talk to a person",
        "speak to a human",
        "speak to a person",
        "human",
        "agent",
        "a human",
        "real person",
        "a person",
        "open a ticket",
        "open ticket",
        "create a ticket",
        "raise a ticket",
        "new ticket",
        "file a ticket",
        "contact the helpdesk",
        "contact helpdesk",
        "helpdesk",
        "contact support",
        "i need a human",
        "i need help from a person",
    }
)
_MY_TICKETS = frozenset({"my tickets", "my ticket", "tickets mine", "show my tickets", "list my tickets"})
_TICKETS = frozenset({"tickets", "open tickets", "list tickets", "show tickets", "queue"})

_STATS = re.compile(r"^(?:stats|statistics)(?: (?:for |last )?(\d{1,3}) ?(?:d|days?))?$")
_RELOAD = frozenset({"reload knowledge", "reload", "knowledge reload", "reload the knowledge"})
_UNMATCHED = frozenset({"unmatched", "unanswered", "show unmatched"})
_GAPS = re.compile(r"^(?:gaps|knowledge gaps|show gaps)(?: (?:for |last )?(\d{1,3}) ?(?:d|days?))?$")
_NEXT = frozenset({"next", "next step", "next steps", "next page", "more"})
_PREVIOUS = frozenset({"previous", "prev", "back", "previous step", "previous steps", "previous page"})

RouteKind = Literal[
    "empty",
    "help",
    "setup",
    "setup_next",
    "setup_previous",
    "triage",
    "escalate",
    "my_tickets",
    "tickets",
    "ticket",
    "stats",
    "unmatched",
    "gaps",
    "reload",
]


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    text: str
    step: int = 0  # setup guide: the 0-based step asked for
    ticket: str = ""  # "HD-1042" for the ticket route
    days: int = 7  # the stats and gaps period


def bare_id(webex_id: str) -> str:
    """The UUID at the end of a base64 REST id ("ciscospark://us/PEOPLE/<uuid>"); bare UUIDs pass through."""
    try:
        padded = webex_id + "=" * (-len(webex_id) % 4)
        decoded = base64.b64decode(padded, altchars=b"-_", validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return webex_id
    return decoded.rsplit("/", 1)[-1] if decoded.startswith("ciscospark://") else webex_id


def strip_mention(message: Message, me: Person) -> str:
    """The message text without the bot's @mention.

    The html names the mention by id (sometimes a bare UUID); without html, fall back to the display name
    (or first name) at the start of the text.
    """
    my_ids = {me.id, bare_id(me.id)}
    if message.html:
        found = False

        def drop_mine(m: re.Match[str]) -> str:
            nonlocal found
            if m.group(1) in my_ids or bare_id(m.group(1)) in my_ids:
                found = True
                return " "
            return m.group(2)

        stripped = _MENTION.sub(drop_mine, message.html)
        if found:
            return " ".join(_unescape(_TAG.sub(" ", stripped)).split())
    text = message.text.strip()
    for name in sorted({me.display_name, me.first_name or "", me.nick_name or ""}, key=len, reverse=True):
        if name and text.casefold().startswith(name.casefold()):
            return text[len(name) :].lstrip(" ,:")
    return text


def _unescape(html: str) -> str:
    return (
        html.replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", '"')
        .replace("&#39;", "'")
        .replace("&amp;", "&")
    )


def route(text: str) -> Route:
    """What kind of answer a message asks for. Everything that isn't a command goes to triage."""
    command = " ".join(text.casefold().strip(" ?!.").split())
    if not command:
        return Route("empty", text)
    if command in {"help", "/help", "?", "what can you do", "commands", "menu", "hi", "hello", "hey"}:
        return Route("help", text)
    stats = _STATS.match(command)
    if stats:
        return Route("stats", text, days=min(365, max(1, int(stats.group(1) or 7))))
    if command in _UNMATCHED:
        return Route("unmatched", text)
    gaps = _GAPS.match(command)
    if gaps:
        return Route("gaps", text, days=min(365, max(1, int(gaps.group(1) or 7))))
    if command in _RELOAD:
        return Route("reload", text)
    if command in _NEXT:
        return Route("setup_next", text)
    if command in _PREVIOUS:
        return Route("setup_previous", text)
    if command in _ESCALATE or command.removeprefix("please ").removeprefix("i want to ") in _ESCALATE:
        return Route("escalate", text)
    if command in _MY_TICKETS:
        return Route("my_tickets", text)
    if command in _TICKETS:
        return Route("tickets", text)
    ticket = _TICKET.match(command)
    if ticket:
        return Route("ticket", text, ticket=f"HD-{int(ticket.group(1))}")
    step = _SETUP_STEP.match(command)
    if step:
        return Route("setup", text, step=max(0, int(step.group(1)) - 1))
    if _SETUP.match(command):
        return Route("setup", text)
    return Route("triage", text)


def reply_parent(message: Message) -> str | None:
    """Where a reply goes: the message's thread in a group space; nowhere (plain) in a direct space."""
    if message.room_type != "group":
        return None
    return message.parent_id or message.id
