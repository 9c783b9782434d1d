"""Pure message building: a triage result or bot outcome in, Webex markdown plus an Adaptive Card out."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from bot.cardmodels import (
    MAX_ACTIONS,
    Action,
    ActionOpenUrl,
    ActionShowCard,
    ActionSubmit,
    AdaptiveCard,
    Container,
    ContainerStyle,
    Element,
    Fact,
    FactSet,
    InputText,
    TextBlock,
)
from bot.knowledge import Article, KnowledgeBase, Link, Step
from bot.triage import TriageResult

if TYPE_CHECKING:  # the store is I/O; the cards only read its plain dataclasses
    from bot.store import Stats, TriageRecord

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Webex rejects text/markdown over 7439 bytes; we hold the whole JSON body to the same bound.
MAX_BODY_BYTES = 7439
# Builders fit markdown + card into what is left after the ids that to_webex adds later
# (Webex ids are ~80-100 characters, an email at most 254).
ENVELOPE_RESERVE = 640
HELPDESK_LINK = "helpdesk-portal"
CONTROL_HUB_LINK = "control-hub"

EXCERPT_CHARS = 200  # how much of a user's message we echo back
TITLE_CHARS = 150
BUTTON_CHARS = 40  # longer button titles get cut off by Webex clients anyway
URL_BUTTONS = 2  # link buttons on an answer; the rest go into a text line
CLARIFY_CHOICES = 3
MAX_SUBMIT_KEYS = 20
MAX_NOTE_CHARS = 1000

CONTACT_HELPDESK = "Contact the helpdesk"
SEND_TO_HELPDESK = "Send to the helpdesk"
ADMIN_NOTE = "This one needs your Webex administrator. The steps say what to tell them."


# --- Escaping and shortening -----------------------------------------------------------------------

# Look-alike characters for everything Webex markdown or Adaptive Card markdown would interpret:
# mentions (<@all>, <@personEmail:...>), HTML tags, links and images ([x](y), ![x](y)), emphasis,
# code spans, entities and headings. Look-alikes keep the text readable where backslash escapes are
# rendered inconsistently across Webex clients.
_NEUTRAL = str.maketrans(
    {
        "<": "＜",
        ">": "＞",
        "[": "［",
        "]": "］",
        "(": "（",
        ")": "）",
        "*": "＊",
        "_": "＿",
        "`": "｀",
        "\\": "＼",
        "&": "＆",
        "#": "＃",
    }
)
_AT_ALL = re.compile(r"@(?=all)", re.IGNORECASE)
# Webex turns bare URLs into links; the bot repeating a user's URL would lend it the bot's authority.
_SCHEME_SEP = re.compile(r":/+")
_WHITESPACE = re.compile(r"\s+")


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a word boundary where one is near, ending in "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return "…"[: max(limit, 0)]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def escape_user_text(s: str, max_len: int) -> str:
    """User text made inert for Webex markdown and card text: one line, no markup, at most `max_len` characters."""
    # Drop control and format characters (zero-width spaces, bidi overrides) *before* matching @all,
    # so "@\u200ball" cannot reassemble into a mention after we have looked.
    visible = "".join(
        " " if ch.isspace() else ch
        for ch in s
        if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf")
    )
    text = _WHITESPACE.sub(" ", visible).strip().translate(_NEUTRAL)
    text = _AT_ALL.sub("＠", text)
    text = _SCHEME_SEP.sub(lambda m: ":" + "／" * (len(m.group()) - 1), text)
    # Cutting characters off the end cannot create any of the tokens above.
    return shorten(text, max_len)


# --- Card-submit payloads --------------------------------------------------------------------------


def _json_bool(value: object) -> object:
    # Card data comes back as JSON; tolerate a client that stringified it, but nothing looser.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    raise ValueError("expected true or false")


def _json_int(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a whole number")  # bool is an int subclass in Python
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    raise ValueError("expected a whole number")


JsonBool = Annotated[bool, BeforeValidator(_json_bool)]
PageNumber = Annotated[int, BeforeValidator(_json_int), Field(ge=0, le=9999)]
ArticleRef = Annotated[str, Field(max_length=64, pattern=r"^(1000:\d{1,4}|[a-z0-9]+(-[a-z0-9]+)*)$")]
# Webex ids are base64 (sometimes bare UUIDs); the pattern keeps forged markup out of our replies.
ThreadId = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9+/=_:.\-]+$")]


class _Payload(BaseModel):
    # Unknown keys are dropped, not refused: Webex merges every input on the card into the submit, so a
    # card that later gains an input must not break the buttons already sent.
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class FeedbackData(_Payload):
    verb: Literal["feedback"] = "feedback"
    article_id: ArticleRef
    helpful: JsonBool
    thread_id: ThreadId


class ShowData(_Payload):
    verb: Literal["show"] = "show"
    article_id: ArticleRef
    thread_id: ThreadId


class SetupPageData(_Payload):
    verb: Literal["setup_page"] = "setup_page"
    page: PageNumber
    thread_id: ThreadId


TicketNumber = Annotated[str, Field(pattern=r"^HD-\d{1,9}$")]
# Input.Text values arrive merged into the submit; the card's maxLength keeps honest clients inside these.
NoteText = Annotated[str, Field(max_length=MAX_NOTE_CHARS)]


class EscalateData(_Payload):
    """ "Contact the helpdesk": asks for an optional note before anything is filed."""

    verb: Literal["escalate"] = "escalate"
    thread_id: ThreadId
    article_id: ArticleRef | None = None
    origin_id: ThreadId | None = None  # the message that was triaged


class FileTicketData(_Payload):
    verb: Literal["file_ticket"] = "file_ticket"
    thread_id: ThreadId
    article_id: ArticleRef | None = None
    origin_id: ThreadId | None = None
    note: NoteText = ""


class ClaimData(_Payload):
    verb: Literal["claim"] = "claim"
    number: TicketNumber


class ResolveData(_Payload):
    verb: Literal["resolve"] = "resolve"
    number: TicketNumber
    resolution: NoteText = ""


class AskInfoData(_Payload):
    verb: Literal["ask_info"] = "ask_info"
    number: TicketNumber
    question: Annotated[str, Field(min_length=1, max_length=MAX_NOTE_CHARS)]


class AnswerInfoData(_Payload):
    verb: Literal["answer_info"] = "answer_info"
    number: TicketNumber
    thread_id: ThreadId
    answer: Annotated[str, Field(min_length=1, max_length=MAX_NOTE_CHARS)]


class TicketFixedData(_Payload):
    verb: Literal["ticket_fixed"] = "ticket_fixed"
    number: TicketNumber
    thread_id: ThreadId
    fixed: JsonBool


class CancelTicketData(_Payload):
    verb: Literal["cancel_ticket"] = "cancel_ticket"
    number: TicketNumber
    thread_id: ThreadId


SubmitData = Annotated[
    FeedbackData
    | ShowData
    | SetupPageData
    | EscalateData
    | FileTicketData
    | ClaimData
    | ResolveData
    | AskInfoData
    | AnswerInfoData
    | TicketFixedData
    | CancelTicketData,
    Field(discriminator="verb"),
]
_SUBMIT: TypeAdapter[SubmitData] = TypeAdapter(SubmitData)


def parse_submit(inputs: dict[str, Any]) -> SubmitData | None:
    """The typed payload of a card submit, or None when it is forged, unknown or malformed. Never raises."""
    if not isinstance(inputs, dict) or len(inputs) > MAX_SUBMIT_KEYS:
        return None
    try:
        return _SUBMIT.validate_python(inputs)
    except ValidationError:
        return None


# --- The outgoing message --------------------------------------------------------------------------


def body_bytes(body: dict[str, Any]) -> int:
    """Serialized size of a request body, measured the most expensive common way.

    ASCII-escaped JSON with default separators is never smaller than what aiohttp, requests or a
    compact UTF-8 encoder send, so a body that fits here fits on the wire.
    """
    return len(json.dumps(body).encode("ascii"))


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    markdown: str
    card: dict[str, Any] | None = None

    def content(self) -> dict[str, Any]:
        """The message part of a POST /messages body, without addressing."""
        body: dict[str, Any] = {"markdown": self.markdown}
        if self.card is not None:
            body["attachments"] = [{"contentType": CARD_CONTENT_TYPE, "content": self.card}]
        return body

    def size(self) -> int:
        return body_bytes(self.content())

    def to_webex(
        self, room_id: str | None = None, parent_id: str | None = None, to_person_email: str | None = None
    ) -> dict[str, Any]:
        """The POST /messages body: markdown always (the fallback Webex shows), the card as the one attachment."""
        if bool(room_id) == bool(to_person_email):
            raise ValueError("address a message with exactly one of room_id or to_person_email")
        body: dict[str, Any] = {"roomId": room_id} if room_id else {"toPersonEmail": to_person_email}
        if parent_id:
            body["parentId"] = parent_id
        envelope = body_bytes(body)
        body.update(self.content())
        if body_bytes(body) > MAX_BODY_BYTES:
            # Only ids far longer than Webex issues get here (builders leave ENVELOPE_RESERVE free):
            # a plain answer beats a 400 from Webex.
            body.pop("attachments", None)
            body["markdown"] = _fit_markdown(self.markdown, MAX_BODY_BYTES - envelope)
        return body


def _fit_markdown(markdown: str, limit: int) -> str:
    while markdown and body_bytes({"markdown": markdown}) > limit:
        over = body_bytes({"markdown": markdown}) - limit
        # Each character costs at least one byte; the margin pays for the "…" that shorten adds.
        markdown = shorten(markdown, len(markdown) - over - 8)
    if body_bytes({"markdown": markdown}) > limit:
        raise ValueError("the message addressing alone exceeds the Webex size limit")
    return markdown


def text_message(markdown: str) -> OutgoingMessage:
    """A card-less message, cut to fit."""
    return OutgoingMessage(markdown=_fit_markdown(markdown, MAX_BODY_BYTES - ENVELOPE_RESERVE))


# --- Fitting a card into the size limit (the one place that truncates) -----------------------------


@dataclass(frozen=True, slots=True)
class _Budget:
    items: int  # list entries (steps, codes) shown in full
    chars: int  # longest knowledge text kept in one block


# Most detailed first. Knowledge answers fit at the first level; the rest exists for outliers.
_BUDGETS = (
    _Budget(60, 1500),
    _Budget(12, 600),
    _Budget(8, 400),
    _Budget(6, 300),
    _Budget(5, 220),
    _Budget(4, 160),
    _Budget(3, 120),
    _Budget(2, 90),
    _Budget(1, 70),
)


def _fit(compose: Callable[[_Budget], OutgoingMessage]) -> OutgoingMessage:
    """The most detailed version of a message that fits, with room left for addressing."""
    limit = MAX_BODY_BYTES - ENVELOPE_RESERVE
    message = OutgoingMessage(markdown="")
    for budget in _BUDGETS:
        message = compose(budget)
        if message.size() <= limit:
            return message
    # Unreachable with sane builders; keep the words rather than fail the reply.
    return text_message(message.markdown)


@dataclass(slots=True)
class _Draft:
    """Card body, actions and the matching markdown, written side by side so they never drift apart."""

    budget: _Budget
    body: list[Element] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    paragraphs: list[str] = field(default_factory=list)

    def clip(self, text: str, cap: int | None = None) -> str:
        return shorten(text, self.budget.chars if cap is None else min(cap, self.budget.chars))

    def heading(self, text: str) -> None:
        title = self.clip(text, TITLE_CHARS)
        self.body.append(TextBlock(text=title, size="large", weight="bolder", wrap=True))
        self.paragraphs.append(f"**{title}**")

    def subheading(self, text: str) -> None:
        self.body.append(TextBlock(text=text, weight="bolder", wrap=True, spacing="medium"))
        self.paragraphs.append(f"**{text}**")

    def para(
        self,
        text: str,
        *,
        subtle: bool = False,
        separator: bool = False,
        clip: bool = True,
        card_only: bool = False,
    ) -> None:
        shown = self.clip(text) if clip else text
        self.body.append(
            TextBlock(text=shown, wrap=True, is_subtle=subtle or None, separator=separator or None)
        )
        if not card_only:
            self.paragraphs.append(shown)

    def facts(self, pairs: Sequence[tuple[str, str]]) -> None:
        facts = [(title, self.clip(value, TITLE_CHARS * 2)) for title, value in pairs]
        self.body.append(FactSet(facts=tuple(Fact(title=t, value=v) for t, v in facts)))
        self.paragraphs.append("\n".join(f"**{t}:** {v}" for t, v in facts))

    def callout(self, text: str, style: ContainerStyle) -> None:
        shown = self.clip(text)
        self.body.append(Container(style=style, items=(TextBlock(text=shown, wrap=True),)))
        self.paragraphs.append(f"> {shown}")

    def numbered(self, steps: Sequence[Step], *, start: int = 1, more: str = "see the link") -> None:
        shown = steps[: self.budget.items]
        lines: list[str] = []
        for n, step in enumerate(shown, start):
            text = self.clip(step.text)
            line = f"{n}. **{self.clip(step.title, TITLE_CHARS)}**: {text}" if step.title else f"{n}. {text}"
            self.body.append(TextBlock(text=line, wrap=True, spacing="small"))
            lines.append(line)
            if step.warning:
                warning = "⚠️ " + self.clip(step.warning)
                self.body.append(Container(style="warning", items=(TextBlock(text=warning, wrap=True),)))
                lines.append(f"> {warning}")
        self.paragraphs.append("\n".join(lines))
        self._more(len(steps) - len(shown), "step", more)

    def bullets(self, items: Sequence[str], *, noun: str = "item", more: str = "") -> None:
        shown = [f"- {self.clip(item)}" for item in items[: self.budget.items]]
        if shown:
            self.body.append(TextBlock(text="\n".join(shown), wrap=True, spacing="small"))
            self.paragraphs.append("\n".join(shown))
        self._more(len(items) - len(shown), noun, more)

    def _more(self, hidden: int, noun: str, hint: str) -> None:
        if hidden > 0:
            tail = f", {hint}" if hint else ""
            self.para(f"…and {hidden} more {noun}{'s' if hidden > 1 else ''}{tail}.", subtle=True, clip=False)

    def links(self, links: Sequence[Link], *, buttons: int) -> None:
        """The first `buttons` links become buttons, the rest a line of markdown links."""
        free = min(buttons, MAX_ACTIONS - len(self.actions))
        for link in links[:free]:
            self.actions.append(ActionOpenUrl(title=shorten(link.title, BUTTON_CHARS), url=link.url))
        rest = links[free:]
        if rest:
            self.body.append(TextBlock(text="More help: " + _md_links(rest), wrap=True))
        if links:
            self.paragraphs.append(_md_links(links))

    def submit(self, title: str, payload: _Payload, *, positive: bool = False) -> None:
        """Adds a button if there is room for one (callers add them in priority order)."""
        if len(self.actions) >= MAX_ACTIONS:
            return
        style: Literal["positive"] | None = "positive" if positive else None
        self.actions.append(
            ActionSubmit(title=shorten(title, BUTTON_CHARS), data=payload.to_data(), style=style)
        )

    def message(self, footer: str = "") -> OutgoingMessage:
        card = AdaptiveCard(body=tuple(self.body), actions=tuple(self.actions))
        markdown = "\n\n".join([*self.paragraphs, *([footer] if footer else [])])
        return OutgoingMessage(markdown=markdown, card=card.to_dict())


def _md_links(links: Sequence[Link]) -> str:
    return " · ".join(f"[{link.title}]({link.url})" for link in links)


def _label(article: Article) -> str:
    return f"{article.code} — {article.title}" if article.code else article.title


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _helpdesk(kb: KnowledgeBase) -> Link | None:
    return kb.links.get(HELPDESK_LINK)


# --- Builders --------------------------------------------------------------------------------------


def _article_section(d: _Draft, article: Article) -> None:
    d.heading(article.title)
    if article.code:
        facts = [("Error", f"{article.code} {article.name or ''}".strip())]
        if article.message:
            facts.append(("Webex shows", f"“{article.message}”"))
        d.facts(facts)
    d.para(article.summary)
    # Setup notes are read by the administrators themselves; telling them to ask one would be noise.
    if article.admin_needed and article.kind in ("error", "symptom"):
        d.callout(ADMIN_NOTE, "attention")
    d.subheading("What to try" if article.kind in ("error", "symptom") else "Steps")
    d.numbered(article.steps, more="see the link" if article.links else "ask the helpdesk")


def _answer(
    article: Article,
    kb: KnowledgeBase,
    thread_id: str,
    related: Sequence[str],
    others: Sequence[Article],
    origin_id: str | None = None,
) -> OutgoingMessage:
    links = kb.resolve_links(article.links)

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        _article_section(d, article)
        if related:
            d.para(f"Webex shows the same message for {_join(related[: budget.items])}.", subtle=True)
        if others:
            d.subheading("You also mentioned")
            d.bullets([_label(o) for o in others], noun="code", more="send one on its own to see its fix")
        d.para("Did this help?", separator=True, clip=False, card_only=True)
        # Button priority: Yes, No, up to two links, then the other codes; extra links become text.
        d.submit(
            "Yes, it helped",
            FeedbackData(article_id=article.id, helpful=True, thread_id=thread_id),
            positive=True,
        )
        d.submit("No, still stuck", FeedbackData(article_id=article.id, helpful=False, thread_id=thread_id))
        d.submit(
            CONTACT_HELPDESK,
            EscalateData(thread_id=thread_id, article_id=article.id, origin_id=origin_id),
        )
        d.links(links, buttons=URL_BUTTONS)
        for other in others:
            d.submit(f"Show {other.code or shorten(other.title, BUTTON_CHARS - 5)}", _show(other, thread_id))
        return d.message(footer="Did this help? Answer with the buttons on the card.")

    return _fit(compose)


def _show(article: Article, thread_id: str) -> ShowData:
    return ShowData(article_id=article.id, thread_id=thread_id)


def fix_card(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, origin_id: str | None = None
) -> OutgoingMessage:
    """The best match in full; other codes the message named listed briefly with a button each."""
    known = [m for m in result.matches if m.id in kb.articles]
    if not known:
        return not_sure_card("", kb, thread_id, result.unknown_codes, origin_id=origin_id)
    best = known[0]
    article = kb.articles[best.id]
    if article.kind == "setup-guide":
        return setup_guide_card(kb, 0, thread_id)
    others = [kb.articles[c] for c in result.codes if c != best.id and c in kb.articles]
    related = [kb.articles[r].code or r for r in best.related if r in kb.articles]
    return _answer(article, kb, thread_id, related, others, origin_id)


def article_card(article: Article, kb: KnowledgeBase, thread_id: str) -> OutgoingMessage:
    """One article in full, as shown by a "show" button."""
    if article.kind == "setup-guide":
        return setup_guide_card(kb, 0, thread_id)
    return _answer(article, kb, thread_id, (), ())


def clarify_card(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, origin_id: str | None = None
) -> OutgoingMessage:
    """ "Which of these is it?" with the top candidates as buttons and a way out to the helpdesk."""
    candidates = [kb.articles[m.id] for m in result.matches if m.id in kb.articles][:CLARIFY_CHOICES]
    if not candidates:
        return not_sure_card("", kb, thread_id, result.unknown_codes, origin_id=origin_id)

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        d.heading("Which of these is it?")
        for article in candidates:
            label, summary = d.clip(_label(article), TITLE_CHARS), d.clip(article.summary, 200)
            d.body.append(TextBlock(text=label, weight="bolder", wrap=True))
            d.body.append(TextBlock(text=summary, wrap=True, is_subtle=True, spacing="none"))
            d.paragraphs.append(f"- **{label}**: {summary}")
            d.submit(article.code or article.title, _show(article, thread_id))
        d.para(
            "If none of these fits, reply with the exact error text or code, or ask a person.",
            subtle=True,
            clip=False,
        )
        d.submit(
            "None of these: contact the helpdesk", EscalateData(thread_id=thread_id, origin_id=origin_id)
        )
        return d.message()

    return _fit(compose)


def not_sure_card(
    text_excerpt: str,
    kb: KnowledgeBase,
    thread_id: str,
    unknown_codes: Sequence[str] = (),
    *,
    origin_id: str | None = None,
) -> OutgoingMessage:
    """An honest "I'm not sure", how to ask again, and a way to a person."""
    excerpt = escape_user_text(text_excerpt, EXCERPT_CHARS)
    codes = [c for c in (escape_user_text(code, 20) for code in unknown_codes[:3]) if c]
    helpdesk = _helpdesk(kb)

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        d.heading("I'm not sure what this is")
        if excerpt:
            d.para(f"You wrote: “{excerpt}”", subtle=True)
        if codes:
            verb = "is" if len(codes) == 1 else "are"
            d.para(f"{_join(codes)} {verb} not in the Webex error catalogue I know.")
        d.subheading("To help me find it")
        d.bullets(
            [
                "Paste the exact error text Webex shows, or just its code, like “Error: 1000:1002”.",
                "Describe what you see, like “blank screen when I sign in”.",
                "Send “help” to see what I can do.",
            ]
        )
        d.para("Or hand it to a person: the helpdesk gets what you wrote and what I found.", clip=False)
        d.submit(CONTACT_HELPDESK, EscalateData(thread_id=thread_id, origin_id=origin_id), positive=True)
        if helpdesk is not None:
            d.links([helpdesk], buttons=1)
        return d.message()

    return _fit(compose)


def help_card(
    kb: KnowledgeBase,
    is_admin: bool,
    *,
    thread_id: str | None = None,
    admin_commands: Sequence[tuple[str, str]] = (),
) -> OutgoingMessage:
    """What the bot can do. Admins also see the setup commands; `admin_commands` lists the router's
    other admin commands as (command, what it does); with a `thread_id` admins get a setup-guide button."""
    helpdesk = _helpdesk(kb)
    control_hub = kb.links.get(CONTROL_HUB_LINK)
    guide = kb.setup_guide

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        d.heading("What I can help with")
        d.para("I help with Webex sign-in and phone service (calling) problems.", clip=False)
        d.bullets(
            [
                "**Paste an error**: the message Webex shows, or just its code, like “Error: 1000:1002”.",
                "**Describe a symptom**: like “blank screen when I sign in” or “I can't sign in”.",
                "**help**: show this message.",
            ]
        )
        if is_admin:
            d.subheading("For Webex administrators")
            admin = ["**okta setup**: the Okta SAML single sign-on setup guide, step by step."]
            admin.append("Ask about a setup detail, like “saml attributes” or “backup url”.")
            admin += [f"**{command}**: {what}" for command, what in admin_commands]
            d.bullets(admin, noun="command")
        if helpdesk is not None:
            d.para(f"For anything else, or to reach a person: [{helpdesk.title}]({helpdesk.url})", clip=False)
            d.actions.append(ActionOpenUrl(title="Helpdesk", url=helpdesk.url))
        if is_admin and thread_id and guide is not None:
            d.submit("Okta setup guide", SetupPageData(page=0, thread_id=thread_id))
        if is_admin and control_hub is not None:
            d.links([control_hub], buttons=1)
        return d.message()

    return _fit(compose)


def setup_guide_card(kb: KnowledgeBase, page: int, thread_id: str, page_size: int = 4) -> OutgoingMessage:
    """One page of the setup guide with its warnings, Previous/Next buttons and Control Hub."""
    if page_size < 1:
        raise ValueError("page_size must be at least 1")
    guide = kb.setup_guide
    if guide is None:
        return text_message("The setup guide is not loaded right now. Please try again later.")
    pages = math.ceil(len(guide.steps) / page_size)
    page = min(max(page, 0), pages - 1)  # a stale or forged page number shows the nearest real page
    start = page * page_size
    steps = guide.steps[start : start + page_size]
    last = page == pages - 1
    notes = [kb.articles[n] for n in guide.notes if n in kb.articles]
    control_hub = kb.links.get(CONTROL_HUB_LINK)

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        d.heading(guide.title)
        if page == 0:
            d.para(guide.summary)
        shown = f"Step {start + 1}" if len(steps) == 1 else f"Steps {start + 1}–{start + len(steps)}"
        d.para(f"{shown} of {len(guide.steps)}", subtle=True, clip=False)
        d.numbered(steps, start=start + 1, more="see Control Hub")
        if last and notes:
            d.subheading("Read these too")
            d.bullets([n.title for n in notes], noun="note")
        if page > 0:
            d.submit("Previous steps", SetupPageData(page=page - 1, thread_id=thread_id))
        if not last:
            d.submit("Next steps", SetupPageData(page=page + 1, thread_id=thread_id), positive=True)
        if control_hub is not None:
            d.links([control_hub], buttons=1)
        if last:
            for note in notes:
                d.submit(note.title, _show(note, thread_id))
        return d.message()

    return _fit(compose)


def build(
    result: TriageResult, kb: KnowledgeBase, thread_id: str, text: str, origin_id: str | None = None
) -> OutgoingMessage:
    """The reply to a triaged message: a fix, a question, or an honest "not sure"."""
    if result.outcome == "fix":
        return fix_card(result, kb, thread_id, origin_id)
    if result.outcome == "clarify":
        return clarify_card(result, kb, thread_id, origin_id)
    return not_sure_card(text, kb, thread_id, result.unknown_codes, origin_id=origin_id)


def feedback_ack(helpful: bool, kb: KnowledgeBase) -> OutgoingMessage:
    """A short thank-you, or an apology with the way to a person."""
    if helpful:
        return text_message("Thanks for letting me know. Glad it's working again.")
    helpdesk = _helpdesk(kb)
    where = f"[{helpdesk.title}]({helpdesk.url})" if helpdesk else "your helpdesk"
    return text_message(
        f"Sorry that didn't fix it. Please contact {where} and mention what you already tried."
    )


def refusal(text: str) -> OutgoingMessage:
    """A card-less refusal. `text` is the bot's own wording: pass user text through escape_user_text first."""
    return text_message(text)


def error_message() -> OutgoingMessage:
    return text_message(
        "Sorry, something went wrong on my side. Your message is saved and I'll try again shortly."
    )


# --- Tickets ---------------------------------------------------------------------------------------


class TicketView(Protocol):
    """What the ticket cards read; the store's Ticket has these (a protocol keeps the cards pure)."""

    @property
    def number(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def requester_name(self) -> str: ...
    @property
    def requester_email(self) -> str: ...
    @property
    def original_text(self) -> str: ...
    @property
    def codes(self) -> list[str]: ...
    @property
    def articles(self) -> list[str]: ...
    @property
    def steps_suggested(self) -> list[str]: ...
    @property
    def note(self) -> str | None: ...
    @property
    def transcript(self) -> list[dict[str, str]]: ...
    @property
    def assignee_name(self) -> str | None: ...
    @property
    def resolution(self) -> str | None: ...


TRANSCRIPT_LINES = 6


def _user(text: str | None, limit: int = EXCERPT_CHARS) -> str:
    return escape_user_text(text or "", limit)


def escalation_card(thread_id: str, article_id: str | None, origin_id: str | None) -> OutgoingMessage:
    """Before filing: an optional one-line note, so the helpdesk does not have to ask first."""
    d = _Draft(_BUDGETS[0])
    d.heading("Hand this to the helpdesk?")
    d.para(
        "I'll send the helpdesk what you wrote, what I found and what I suggested. "
        "Anything to add, like what you have already tried? (optional)",
        clip=False,
    )
    d.body.append(
        InputText(
            id="note",
            placeholder="What have you tried? (optional)",
            max_length=MAX_NOTE_CHARS,
            is_multiline=True,
        )
    )
    # The note arrives from the "note" input, merged into this data by the client.
    data = FileTicketData(thread_id=thread_id, article_id=article_id, origin_id=origin_id).to_data()
    data.pop("note")
    d.actions.append(ActionSubmit(title=SEND_TO_HELPDESK, style="positive", data=data))
    return d.message(footer="Use the card to add a note and send it to the helpdesk.")


def ticket_card(ticket: TicketView, kb: KnowledgeBase) -> OutgoingMessage:
    """The helpdesk's view: who, what, the codes, what was tried, the note and the conversation."""
    tried = [kb.articles[a].title for a in ticket.articles if a in kb.articles]

    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
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
            ActionShowCard(
                title="Resolve",
                card=AdaptiveCard(
                    body=(
                        InputText(
                            id="resolution",
                            placeholder="What fixed it? (sent to the requester)",
                            is_multiline=True,
                            max_length=MAX_NOTE_CHARS,
                        ),
                    ),
                    actions=(
                        ActionSubmit(title="Resolve", data={"verb": "resolve", "number": ticket.number}),
                    ),
                ),
            )
        )
        d.actions.append(
            ActionShowCard(
                title="Ask for info",
                card=AdaptiveCard(
                    body=(
                        InputText(
                            id="question",
                            placeholder="Your question for the requester",
                            is_multiline=True,
                            max_length=MAX_NOTE_CHARS,
                        ),
                    ),
                    actions=(
                        ActionSubmit(
                            title="Send question",
                            data={"verb": "ask_info", "number": ticket.number},
                        ),
                    ),
                ),
            )
        )
        return d.message(footer="Claim, resolve or ask for info with the buttons on the card.")

    return _fit(compose)


def ticket_filed_card(ticket: TicketView, thread_id: str, helpdesk_reachable: bool) -> OutgoingMessage:
    """The requester's confirmation, with the number and a way to take it back."""
    d = _Draft(_BUDGETS[0])
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


def info_request_card(ticket: TicketView, asker: str, question: str, thread_id: str) -> OutgoingMessage:
    d = _Draft(_BUDGETS[0])
    d.heading(f"{_user(asker, 60)} from the helpdesk asks about {ticket.number}")
    d.para(f"“{_user(question, 800)}”", clip=False)
    d.body.append(
        InputText(id="answer", placeholder="Your answer", is_multiline=True, max_length=MAX_NOTE_CHARS)
    )
    d.submit(
        "Send answer", AnswerInfoData(number=ticket.number, thread_id=thread_id, answer="-"), positive=True
    )
    # The answer comes from the input; the "-" above only satisfies the model and is overwritten by it.
    return d.message(footer="Answer with the card, or reply here.")


def ticket_resolved_card(ticket: TicketView, resolver: str, thread_id: str) -> OutgoingMessage:
    d = _Draft(_BUDGETS[0])
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


def ticket_list(tickets: Sequence[TicketView], title: str) -> OutgoingMessage:
    if not tickets:
        return text_message(f"**{title}**\n\nNone right now.")
    lines = [
        f"- **{t.number}** · {t.status}"
        + (f" · {_user(t.assignee_name, 40)}" if t.assignee_name else "")
        + f" · {_user(t.original_text, 80)}"
        for t in tickets
    ]
    return text_message(f"**{title}**\n\n" + "\n".join(lines))


def ticket_summary(ticket: TicketView) -> OutgoingMessage:
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


# --- Admin -----------------------------------------------------------------------------------------


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "–"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def stats_lines(stats: Stats, days: int, kb: KnowledgeBase) -> list[tuple[str, str]]:
    """The numbers admins see, as (label, value) pairs: shared by the card and `python -m bot stats`."""
    triaged = stats.messages_triaged
    answered = stats.helpful + stats.not_helpful
    return [
        ("Period", f"last {days} day{'s' if days != 1 else ''}"),
        ("Messages triaged", str(triaged)),
        ("Answered confidently", f"{stats.confident} ({_pct(stats.confident, triaged)})"),
        ("Asked which one", f"{stats.clarify} ({_pct(stats.clarify, triaged)})"),
        ("Not sure", f"{stats.none} ({_pct(stats.none, triaged)})"),
        ("Resolved by the bot", f"{stats.resolved_by_bot} (“Yes, this helped”)"),
        (
            "Potential deflection",
            f"{stats.potential_deflection} (answered, no feedback, no ticket within 24 h)",
        ),
        (
            "Feedback",
            f"{stats.helpful} yes / {stats.not_helpful} no ({_pct(stats.helpful, answered)} helpful)",
        ),
        ("Escalations", f"{stats.escalations} ({_pct(stats.escalations, triaged)} of messages)"),
        ("Open tickets now", str(stats.open_tickets)),
        ("Median time to claim", _duration(stats.median_claim_seconds)),
        ("Median time to resolve", _duration(stats.median_resolve_seconds)),
        ("Top error codes", ", ".join(f"{c} ×{n}" for c, n in stats.top_codes) or "–"),
        (
            "Top articles",
            ", ".join(
                f"{kb.articles[a].code or a if a in kb.articles else a} ×{n}" for a, n in stats.top_articles
            )
            or "–",
        ),
    ]


def stats_card(stats: Stats, days: int, kb: KnowledgeBase) -> OutgoingMessage:
    def compose(budget: _Budget) -> OutgoingMessage:
        d = _Draft(budget)
        d.heading("Helpdesk bot stats")
        d.facts(stats_lines(stats, days, kb))
        return d.message()

    return _fit(compose)


def unmatched_list(records: Sequence[TriageRecord]) -> OutgoingMessage:
    """What people asked that got no confident answer: where the knowledge has gaps (texts are redacted)."""
    if not records:
        return text_message("**Unmatched questions**\n\nNone: every recent question got a confident answer.")
    lines = [
        f"- {r.created_at:%Y-%m-%d %H:%M} · {r.outcome} · “{escape_user_text(r.text, 160)}”" for r in records
    ]
    return text_message("**Unmatched questions** (newest first, secrets redacted)\n\n" + "\n".join(lines))


def reload_failed(problems: Sequence[str]) -> OutgoingMessage:
    shown = [f"- {escape_user_text(p, 300)}" for p in problems[:20]]
    more = f"\n\n…and {len(problems) - 20} more." if len(problems) > 20 else ""
    return text_message(
        "**Knowledge not reloaded**: the files have problems, so I kept the knowledge I had.\n\n"
        + "\n".join(shown)
        + more
    )


def reload_done(
    added: Sequence[str], removed: Sequence[str], changed: Sequence[str], total: int
) -> OutgoingMessage:
    if not (added or removed or changed):
        return text_message(f"**Knowledge reloaded**: no changes ({total} articles).")
    parts = [f"**Knowledge reloaded**: {total} articles."]
    for label, ids in (("Added", added), ("Removed", removed), ("Changed", changed)):
        if ids:
            parts.append(f"{label} ({len(ids)}): " + ", ".join(ids[:40]) + (" …" if len(ids) > 40 else ""))
    return text_message("\n\n".join(parts))
