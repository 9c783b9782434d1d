"""Typed Adaptive Cards 1.3 elements: the subset the bot sends, with the official schema's rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Webex renders Adaptive Cards up to 1.3 and shows at most five actions per card.
CARD_VERSION: Literal["1.3"] = "1.3"
MAX_ACTIONS = 5

# The canonical enum spellings of the 1.3 schema. The schema also accepts any letter case through a
# regex; we emit only the canonical form, so a stricter Literal costs nothing and catches typos.
Spacing = Literal["default", "none", "small", "medium", "large", "extraLarge", "padding"]
Color = Literal["default", "dark", "light", "accent", "good", "warning", "attention"]
FontWeight = Literal["default", "lighter", "bolder"]
FontSize = Literal["default", "small", "medium", "large", "extraLarge"]
FontType = Literal["default", "monospace"]
HorizontalAlignment = Literal["left", "center", "right"]
VerticalContentAlignment = Literal["top", "center", "bottom"]
ContainerStyle = Literal["default", "emphasis", "good", "attention", "warning", "accent"]
ActionStyle = Literal["default", "positive", "destructive"]
TextInputStyle = Literal["text", "tel", "url", "email"]
AssociatedInputs = Literal["Auto", "None"]

# Action.OpenUrl takes a uri-reference; we only ever send absolute web or mail links, so accept only those.
Url = Annotated[str, Field(min_length=1, max_length=2000, pattern=r"^(https?://|mailto:)\S+$")]


class CardModel(BaseModel):
    """Base: frozen, no unknown fields, snake_case in Python and camelCase in JSON."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON Webex expects: camelCase names, unset (None) properties left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Element(CardModel):
    id: str | None = None
    spacing: Spacing | None = None
    separator: bool | None = None
    is_visible: bool | None = None


# --- Body elements -------------------------------------------------------------------------------


class TextBlock(_Element):
    type: Literal["TextBlock"] = "TextBlock"
    text: str
    wrap: bool | None = None
    weight: FontWeight | None = None
    size: FontSize | None = None
    color: Color | None = None
    font_type: FontType | None = None
    is_subtle: bool | None = None
    horizontal_alignment: HorizontalAlignment | None = None
    max_lines: Annotated[int, Field(ge=1)] | None = None


class Fact(CardModel):
    title: str
    value: str


class FactSet(_Element):
    type: Literal["FactSet"] = "FactSet"
    facts: tuple[Fact, ...]


class Container(_Element):
    type: Literal["Container"] = "Container"
    items: tuple[Element, ...]
    style: ContainerStyle | None = None
    vertical_content_alignment: VerticalContentAlignment | None = None


class InputText(_Element):
    type: Literal["Input.Text"] = "Input.Text"
    # The submitted value is keyed by this id, so an empty or blank id would lose the user's input.
    id: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^\S+$")]
    placeholder: str | None = None
    value: str | None = None
    is_multiline: bool | None = None
    max_length: Annotated[int, Field(ge=1)] | None = None
    label: str | None = None
    is_required: bool | None = None
    error_message: str | None = None
    style: TextInputStyle | None = None
    regex: str | None = None


Element = Annotated[
    TextBlock | FactSet | Container | InputText,
    Field(discriminator="type"),
]


# --- Actions -------------------------------------------------------------------------------------


class _Action(CardModel):
    title: str | None = None
    style: ActionStyle | None = None


class ActionSubmit(_Action):
    type: Literal["Action.Submit"] = "Action.Submit"
    # Webex merges this object into the submitted `inputs`; the bot reads it back with a typed model.
    data: dict[str, Any] | None = None
    associated_inputs: AssociatedInputs | None = None


class ActionOpenUrl(_Action):
    type: Literal["Action.OpenUrl"] = "Action.OpenUrl"
    url: Url


class ActionShowCard(_Action):
    type: Literal["Action.ShowCard"] = "Action.ShowCard"
    card: AdaptiveCard


Action = Annotated[ActionSubmit | ActionOpenUrl | ActionShowCard, Field(discriminator="type")]


# --- The card ------------------------------------------------------------------------------------


class AdaptiveCard(CardModel):
    type: Literal["AdaptiveCard"] = "AdaptiveCard"
    version: Literal["1.3"] = CARD_VERSION
    body: tuple[Element, ...] = ()
    actions: tuple[Action, ...] = ()
    fallback_text: str | None = None
    schema_url: str | None = Field(default=None, alias="$schema")

    @field_validator("actions")
    @classmethod
    def _few_actions(cls, actions: tuple[Action, ...]) -> tuple[Action, ...]:
        if len(actions) > MAX_ACTIONS:
            raise ValueError(f"Webex shows at most {MAX_ACTIONS} actions on a card, got {len(actions)}")
        return actions

    @model_validator(mode="after")
    def _unique_input_ids(self) -> AdaptiveCard:
        # Submitted values are keyed by input id: a duplicate silently overwrites one of the answers.
        seen: set[str] = set()
        for element in iter_elements(self.body):
            if isinstance(element, InputText):
                if element.id in seen:
                    raise ValueError(f"duplicate input id {element.id!r}")
                seen.add(element.id)
        return self


def iter_elements(elements: tuple[Element, ...]) -> Iterator[Element]:
    """Every element, depth first, including those inside containers."""
    for element in elements:
        yield element
        if isinstance(element, Container):
            yield from iter_elements(element.items)


for _model in (Container, ActionShowCard, AdaptiveCard):
    _model.model_rebuild()
