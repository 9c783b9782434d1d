"""What the store hands out: frozen plain records and their small pure helpers, with no database in sight."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any, Literal

STATUSES = ("pending", "working", "done", "failed", "dead")
TICKET_STATUSES = ("open", "claimed", "resolved", "cancelled")
TicketStatus = Literal["open", "claimed", "resolved", "cancelled"]
OUTBOX_STATUSES = ("pending", "delivered", "dead")
FIRST_TICKET_NUMBER = 1001
TICKET_PREFIX = "HD-"
# At most 9 digits, so a typed number never overflows the INTEGER column.
TICKET_NUMBER_RE = re.compile(r"(?:HD-?|#)?\s*(\d{1,9})", re.IGNORECASE)
MAX_LOGGED_TEXT = 2000


@dataclass(frozen=True)
class InboxEvent:
    """One webhook delivery as the inbox holds it."""

    event_id: str
    resource: str
    payload: dict[str, Any]
    status: str
    attempts: int
    last_error: str | None
    reply_message_id: str | None
    received_at: datetime
    next_attempt_at: datetime


@dataclass(frozen=True)
class TriageRecord:
    """What the bot made of one message."""

    event_id: str
    person_id: str
    person_email: str
    room_id: str
    thread_id: str | None
    text: str
    outcome: str
    top_id: str | None
    score: float | None
    codes: list[str]
    created_at: datetime


@dataclass(frozen=True)
class Ticket:
    """A handoff to the helpdesk, as it stands now."""

    id: int
    number: str
    status: TicketStatus
    requester_id: str
    requester_email: str
    requester_name: str
    room_id: str
    thread_id: str | None
    original_text: str
    codes: list[str]
    articles: list[str]
    steps_suggested: list[str]
    note: str | None
    transcript: list[dict[str, str]]
    assignee_id: str | None
    assignee_name: str | None
    # After a reopen this is the resolution the requester turned down, until the ticket is resolved again.
    resolution: str | None
    helpdesk_message_id: str | None
    info_requests: int
    reopened: int
    created_at: datetime
    claimed_at: datetime | None
    resolved_at: datetime | None
    updated_at: datetime
    # Where notices to the requester go: their thread in a group space, None (plain) in a direct one.
    reply_parent: str | None


@dataclass(frozen=True)
class TicketChange:
    """The outcome of a transition: ok says whether it happened; ticket is the state either way."""

    ok: bool
    ticket: Ticket


class TicketRefused(Exception):
    """A ticket not filed: its thread already has one open (`existing`), or the requester reached the hourly
    cap (`existing` None)."""

    def __init__(self, existing: Ticket | None, cap: int = 0) -> None:
        super().__init__(
            f"open ticket {existing.number} in this thread" if existing else f"{cap} tickets an hour"
        )
        self.existing = existing
        self.cap = cap


@dataclass(frozen=True)
class OutboxItem:
    """One ticket event waiting for the ITSM webhook."""

    id: int
    ticket_id: int
    event: str
    payload: dict[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Stats:
    """What the bot did over a period, for admins."""

    messages_triaged: int
    confident: int
    clarify: int
    none: int
    helpful: int
    not_helpful: int
    escalations: int
    resolved_by_bot: int
    potential_deflection: int
    top_codes: list[tuple[str, int]]
    top_articles: list[tuple[str, int]]
    open_tickets: int
    median_claim_seconds: float | None
    median_resolve_seconds: float | None
    # ITSM deliveries that gave up, and the later events of their tickets that wait behind them (now, not
    # over the period: `python -m bot outbox` revives or drops them).
    dead_deliveries: int = 0
    held_deliveries: int = 0


@dataclass(frozen=True)
class DayCounts:
    """One day (UTC) of the stats chart."""

    day: date
    messages: int
    confident: int
    helpful: int
    escalations: int


@dataclass(frozen=True)
class GapQuestion:
    """A question the knowledge did not answer: no confident answer, or "No, still stuck" on the one given."""

    text: str
    outcome: str
    # The article the bot put forward (the answer voted down, or the best of "which of these?"), if any.
    offered: str | None
    stuck: bool
    created_at: datetime


@dataclass(frozen=True)
class DeadDelivery:
    """An ITSM delivery that gave up, with what waits behind it."""

    id: int
    ticket_number: str
    event: str
    sequence: int
    attempts: int
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime
    held: int  # later events of the same ticket that wait for this one


@dataclass(frozen=True)
class Replica:
    """One running process of the bot, as its heartbeat last reported it."""

    replica_id: str
    started_at: datetime
    last_seen: datetime
    knowledge_version: int
    knowledge_fingerprint: str
    articles: int
    knowledge_error: str | None


def ticket_payload(ticket: Ticket) -> dict[str, Any]:
    """The ticket as plain JSON: what the ITSM webhook receives."""
    payload = asdict(ticket)
    del payload["reply_parent"]  # how the bot addresses the requester in Webex, nothing an ITSM system needs
    for key, value in payload.items():
        if isinstance(value, datetime):
            payload[key] = value.isoformat()
    return payload


def parse_ticket_number(number: str) -> int | None:
    """The n of "HD-n", "hd-n", "HDn", "#n" or "n"; None for anything else."""
    match = TICKET_NUMBER_RE.fullmatch(number.strip())
    return None if match is None else int(match.group(1))


def transcript_entry(who: str, text: str, at: datetime) -> dict[str, str]:
    """One line of a conversation as a ticket's transcript keeps it."""
    return {"who": who, "text": text[:MAX_LOGGED_TEXT], "at": at.isoformat()}
