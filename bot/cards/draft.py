"""The outgoing message: markdown and card drafted side by side, fitted into Webex's size limit."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from annotated_types import MaxLen, MinLen
from pydantic.fields import FieldInfo

from bot.cards.elements import (
    MAX_ACTIONS,
    Action,
    ActionOpenUrl,
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
from bot.cards.escape import shorten
from bot.cards.submit import Payload
from bot.i18n import _, ngettext
from bot.knowledge import Link, Step

CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
# Webex rejects text/markdown over 7439 bytes; we hold the whole JSON body to the same bound.
MAX_BODY_BYTES = 7439
# Builders fit markdown + card into what is left after the ids that to_webex adds later
# (Webex ids are ~80-100 characters, an email at most 254).
ENVELOPE_RESERVE = 640
TITLE_CHARS = 150
BUTTON_CHARS = 40  # longer button titles get cut off by Webex clients anyway


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
class Budget:
    items: int  # list entries (steps, codes) shown in full
    chars: int  # longest knowledge text kept in one block


# Most detailed first. Knowledge answers fit at the first level; the rest exists for outliers.
BUDGETS = (
    Budget(60, 1500),
    Budget(12, 600),
    Budget(8, 400),
    Budget(6, 300),
    Budget(5, 220),
    Budget(4, 160),
    Budget(3, 120),
    Budget(2, 90),
    Budget(1, 70),
)


def fit(compose: Callable[[Budget], OutgoingMessage]) -> OutgoingMessage:
    """The most detailed version of a message that fits, with room left for addressing."""
    limit = MAX_BODY_BYTES - ENVELOPE_RESERVE
    message = OutgoingMessage(markdown="")
    for budget in BUDGETS:
        message = compose(budget)
        if message.size() <= limit:
            return message
    # Unreachable with sane builders; keep the words rather than fail the reply.
    return text_message(message.markdown)


@dataclass(slots=True)
class Draft:
    """Card body, actions and the matching markdown, written side by side so they never drift apart."""

    budget: Budget = BUDGETS[0]
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

    def numbered(self, steps: Sequence[Step], *, start: int = 1, more: str = "") -> None:
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

    def bullets(self, items: Sequence[str], *, noun: Noun = "item", more: str = "") -> None:
        shown = [f"- {self.clip(item)}" for item in items[: self.budget.items]]
        if shown:
            self.body.append(TextBlock(text="\n".join(shown), wrap=True, spacing="small"))
            self.paragraphs.append("\n".join(shown))
        self._more(len(items) - len(shown), noun, more)

    def _more(self, hidden: int, noun: Noun, hint: str) -> None:
        if hidden > 0:
            more = _more_text(noun, hidden).format(count=hidden)
            # Translators: {more} is "…and 3 more steps", {hint} what to do about them ("see the link").
            text = _("{more}, {hint}.").format(more=more, hint=hint) if hint else more + "."
            self.para(text, subtle=True, clip=False)

    def links(self, links: Sequence[Link], *, buttons: int) -> None:
        """The first `buttons` links become buttons, the rest a line of markdown links."""
        free = min(buttons, MAX_ACTIONS - len(self.actions))
        for link in links[:free]:
            self.actions.append(ActionOpenUrl(title=shorten(link.title, BUTTON_CHARS), url=link.url))
        rest = links[free:]
        if rest:
            self.body.append(TextBlock(text=_("More help: {links}").format(links=_md_links(rest)), wrap=True))
        if links:
            self.paragraphs.append(_md_links(links))

    def submit(self, title: str, payload: Payload, *, positive: bool = False) -> None:
        """Adds a button if there is room for one (callers add them in priority order)."""
        if payload.input_fields():
            raise ValueError(f"{type(payload).__name__} takes fields from inputs: add it with form()")
        if len(self.actions) >= MAX_ACTIONS:
            return
        self.actions.append(_button(title, payload.to_data(), positive))

    def form(
        self,
        payload: type[Payload],
        values: Mapping[str, Any],
        prompts: Mapping[str, Prompt],
        *,
        title: str,
        positive: bool = False,
    ) -> None:
        """The payload's inputs at the end of the body and the button that submits them (see `form`)."""
        inputs, button = form(payload, values, prompts, title=title, positive=positive)
        self.body.extend(inputs)
        self.actions.append(button)

    def message(self, footer: str = "") -> OutgoingMessage:
        card = AdaptiveCard(body=tuple(self.body), actions=tuple(self.actions))
        markdown = "\n\n".join([*self.paragraphs, *([footer] if footer else [])])
        return OutgoingMessage(markdown=markdown, card=card.to_dict())


@dataclass(frozen=True, slots=True)
class Prompt:
    """The card copy of one input: what it asks for, and what the client says when a required one is blank."""

    placeholder: str
    error: str | None = None


def form(
    payload: type[Payload],
    values: Mapping[str, Any],
    prompts: Mapping[str, Prompt],
    *,
    title: str,
    positive: bool = False,
) -> tuple[tuple[InputText, ...], ActionSubmit]:
    """One Input.Text per field the payload takes from inputs, and the Action.Submit carrying `values`.

    Input ids are the payload's field names and maxLength its limit; a field that refuses blank text gets
    isRequired, so the client asks for it instead of sending a submit the bot would refuse.
    """
    fields = payload.input_fields()
    if prompts.keys() != fields.keys():
        raise ValueError(
            f"{payload.__name__} takes {sorted(fields)} from inputs; prompts given: {sorted(prompts)}"
        )
    inputs = tuple(_input(name, info, prompts[name]) for name, info in fields.items())
    return inputs, _button(title, payload.button_data(**values), positive)


def _input(name: str, info: FieldInfo, prompt: Prompt) -> InputText:
    required = any(isinstance(m, MinLen) and m.min_length > 0 for m in info.metadata)
    if required and not prompt.error:
        raise ValueError(f"the required input {name!r} needs an error message")
    return InputText(
        id=name,
        placeholder=prompt.placeholder,
        # Every input the bot asks for is free text: a note, a question, an answer.
        is_multiline=True,
        max_length=next((m.max_length for m in info.metadata if isinstance(m, MaxLen)), None),
        is_required=required or None,
        error_message=prompt.error if required else None,
    )


# What a cut list counts, each with its own "…and N more" (languages inflect the noun differently).
Noun = Literal["item", "step", "code", "note", "line", "command"]


def _more_text(noun: Noun, hidden: int) -> str:
    match noun:
        case "step":
            return ngettext("…and {count} more step", "…and {count} more steps", hidden)
        case "code":
            return ngettext("…and {count} more code", "…and {count} more codes", hidden)
        case "note":
            return ngettext("…and {count} more note", "…and {count} more notes", hidden)
        case "line":
            return ngettext("…and {count} more line", "…and {count} more lines", hidden)
        case "command":
            return ngettext("…and {count} more command", "…and {count} more commands", hidden)
        case "item":
            return ngettext("…and {count} more item", "…and {count} more items", hidden)


def _button(title: str, data: dict[str, Any], positive: bool) -> ActionSubmit:
    style: Literal["positive"] | None = "positive" if positive else None
    return ActionSubmit(title=shorten(title, BUTTON_CHARS), data=data, style=style)


def _md_links(links: Sequence[Link]) -> str:
    return " · ".join(f"[{link.title}]({link.url})" for link in links)
