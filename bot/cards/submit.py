"""The inbound contract: what a card submit may carry, one frozen model per verb, and parse_submit."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo

MAX_SUBMIT_KEYS = 20
MAX_NOTE_CHARS = 1000


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


@dataclass(frozen=True, slots=True)
class FromInput:
    """Marks a payload field that an input on the card fills in: the input's id is the field's name."""


class Payload(BaseModel):
    # Unknown keys are dropped, not refused: Webex merges every input on the card into the submit, so a
    # card that later gains an input must not break the buttons already sent.
    model_config = ConfigDict(frozen=True, extra="ignore")

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def input_fields(cls) -> dict[str, FieldInfo]:
        """The fields the card's inputs fill in, in declaration order."""
        return {
            name: info
            for name, info in cls.model_fields.items()
            if any(isinstance(m, FromInput) for m in info.metadata)
        }

    @classmethod
    def button_data(cls, **values: Any) -> dict[str, Any]:
        """The Action.Submit data of a card with inputs: `values` checked as the payload checks them,
        the input fields left out (the client merges the inputs' values in on submit)."""
        return _button_model(cls).model_validate(values).model_dump(mode="json")


@cache
def _button_model(payload: type[Payload]) -> type[BaseModel]:
    # The payload minus its input fields; unknown keys are refused here, so an input field passed by
    # hand (or a typo) fails when the card is built rather than when someone clicks.
    inputs = payload.input_fields()
    fields: dict[str, Any] = {
        name: (info.annotation, info) for name, info in payload.model_fields.items() if name not in inputs
    }
    return create_model(
        f"{payload.__name__}Button", __config__=ConfigDict(frozen=True, extra="forbid"), **fields
    )


class FeedbackData(Payload):
    verb: Literal["feedback"] = "feedback"
    article_id: ArticleRef
    helpful: JsonBool
    thread_id: ThreadId


class ShowData(Payload):
    verb: Literal["show"] = "show"
    article_id: ArticleRef
    thread_id: ThreadId


class SetupPageData(Payload):
    verb: Literal["setup_page"] = "setup_page"
    page: PageNumber
    thread_id: ThreadId


TicketNumber = Annotated[str, Field(pattern=r"^HD-\d{1,9}$")]
# Input.Text values arrive merged into the submit; the inputs take their maxLength from here, which keeps
# honest clients inside these.
NoteText = Annotated[str, Field(max_length=MAX_NOTE_CHARS)]
# Blank means empty once spaces are trimmed: "   " is no answer either.
RequiredText = Annotated[
    str, StringConstraints(strip_whitespace=True), Field(min_length=1, max_length=MAX_NOTE_CHARS)
]


class EscalateData(Payload):
    """ "Contact the helpdesk": asks for an optional note before anything is filed."""

    verb: Literal["escalate"] = "escalate"
    thread_id: ThreadId
    article_id: ArticleRef | None = None
    origin_id: ThreadId | None = None  # the message that was triaged


class FileTicketData(Payload):
    verb: Literal["file_ticket"] = "file_ticket"
    thread_id: ThreadId
    article_id: ArticleRef | None = None
    origin_id: ThreadId | None = None
    note: Annotated[NoteText, FromInput()] = ""


class ClaimData(Payload):
    verb: Literal["claim"] = "claim"
    number: TicketNumber


class ResolveData(Payload):
    verb: Literal["resolve"] = "resolve"
    number: TicketNumber
    resolution: Annotated[NoteText, FromInput()] = ""


class AskInfoData(Payload):
    verb: Literal["ask_info"] = "ask_info"
    number: TicketNumber
    question: Annotated[RequiredText, FromInput()]


class AnswerInfoData(Payload):
    verb: Literal["answer_info"] = "answer_info"
    number: TicketNumber
    thread_id: ThreadId
    answer: Annotated[RequiredText, FromInput()]


class TicketFixedData(Payload):
    verb: Literal["ticket_fixed"] = "ticket_fixed"
    number: TicketNumber
    thread_id: ThreadId
    fixed: JsonBool


class CancelTicketData(Payload):
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


_BY_VERB: dict[str, type[Payload]] = {
    model.model_fields["verb"].default: model
    for model in (
        FeedbackData,
        ShowData,
        SetupPageData,
        EscalateData,
        FileTicketData,
        ClaimData,
        ResolveData,
        AskInfoData,
        AnswerInfoData,
        TicketFixedData,
        CancelTicketData,
    )
}

InputProblem = Literal["too_many", "too_long", "blank"]


def submit_problem(inputs: object) -> tuple[InputProblem, str] | None:
    """Why parse_submit refused a submit of a known verb whose only fault is what the person typed (too long,
    blank, or more inputs than we take), with the input's name; None when it is forged or unknown."""
    if not isinstance(inputs, dict):
        return None
    verb = inputs.get("verb")
    model = _BY_VERB.get(verb) if isinstance(verb, str) else None
    if model is None:
        return None
    if len(inputs) > MAX_SUBMIT_KEYS:
        return "too_many", ""
    try:
        model.model_validate(inputs)
    except ValidationError as exc:
        typed = model.input_fields()
        errors = exc.errors()
        if not errors or any(not e["loc"] or e["loc"][0] not in typed for e in errors):
            return None
        first = errors[0]
        name = str(first["loc"][0])
        if first["type"] == "string_too_long":
            return "too_long", name
        if first["type"] in ("string_too_short", "missing"):
            return "blank", name
    return None


def parse_submit(inputs: dict[str, Any]) -> SubmitData | None:
    """The typed payload of a card submit, or None when it is forged, unknown or malformed. Never raises."""
    if not isinstance(inputs, dict) or len(inputs) > MAX_SUBMIT_KEYS:
        return None
    try:
        return _SUBMIT.validate_python(inputs)
    except ValidationError:
        return None
