"""Frozen pydantic models of the JSON that Webex sends us."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, StringConstraints, field_validator
from pydantic.alias_generators import to_camel

# Webex ids are opaque base64 strings; an empty one means a broken payload, never "no id".
# Printable ASCII and bounded: ids go into database keys, and a 100 KB or NUL-laden id is an attack, not an id.
WebexId = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=r"^[\x20-\x7e]+$")]


class WebexModel(BaseModel):
    """Base for every Webex payload: camelCase on the wire, snake_case in Python, unknown keys dropped."""

    # extra="ignore" because Webex adds fields without notice and must not break parsing.
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore", alias_generator=to_camel)


class Person(WebexModel):
    id: WebexId
    emails: tuple[str, ...] = ()
    display_name: str = ""
    first_name: str | None = None
    last_name: str | None = None
    nick_name: str | None = None
    type: str = "person"
    org_id: str | None = None


class Message(WebexModel):
    id: WebexId
    room_id: WebexId
    room_type: Literal["direct", "group"] | str
    person_id: WebexId
    person_email: str = ""
    text: str = ""
    markdown: str | None = None
    html: str | None = None
    parent_id: str | None = None
    mentioned_people: tuple[str, ...] = ()
    created: datetime | None = None
    attachments: tuple[dict[str, Any], ...] = ()
    files: tuple[str, ...] = ()  # URLs of the uploaded files (one at most)


class AttachmentAction(WebexModel):
    id: WebexId
    type: str = "submit"
    message_id: WebexId
    person_id: WebexId
    room_id: WebexId
    # Any JSON: a forged action may carry a list or a string; parse_submit refuses those quietly.
    inputs: Any = None
    created: datetime | None = None


class MessageEventData(WebexModel):
    """The `data` of a messages/created webhook: ids only, the text must be fetched."""

    id: WebexId
    room_id: WebexId
    room_type: Literal["direct", "group"] | str
    person_id: WebexId
    person_email: str = ""
    created: datetime | None = None


class AttachmentActionEventData(WebexModel):
    """The `data` of an attachmentActions/created webhook: the inputs must be fetched."""

    id: WebexId
    type: str = "submit"
    message_id: WebexId
    person_id: WebexId
    room_id: WebexId
    created: datetime | None = None


class WebhookEnvelope(WebexModel):
    id: WebexId
    name: str = ""
    target_url: str = ""
    resource: str
    event: str
    filter: str | None = None
    org_id: str = ""
    created_by: str = ""
    app_id: str = ""
    owned_by: str = ""
    status: str = ""
    created: datetime | None = None
    actor_id: str = ""
    # Kept as a dict because its shape depends on `resource`; the helpers below parse it.
    data: dict[str, Any]

    @field_validator("data")
    @classmethod
    def _data_has_id(cls, value: dict[str, Any]) -> dict[str, Any]:
        data_id = value.get("id")
        if not isinstance(data_id, str) or not data_id:
            raise ValueError("webhook data must carry a non-empty string 'id'")
        return value

    def message_data(self) -> MessageEventData:
        """Parse `data` of a messages webhook; raises ValueError (incl. ValidationError)."""
        if self.resource != "messages":
            raise ValueError(f"not a messages event: resource={self.resource!r}")
        return MessageEventData.model_validate(self.data)

    def action_data(self) -> AttachmentActionEventData:
        """Parse `data` of an attachmentActions webhook; raises ValueError (incl. ValidationError)."""
        if self.resource != "attachmentActions":
            raise ValueError(f"not an attachmentActions event: resource={self.resource!r}")
        return AttachmentActionEventData.model_validate(self.data)


class Webhook(WebexModel):
    id: WebexId
    name: str
    target_url: str
    resource: str
    event: str
    filter: str | None = None
    secret: str | None = None
    status: str = "active"
    created: datetime | None = None


class Room(WebexModel):
    id: WebexId
    title: str = ""
    type: Literal["direct", "group"] | str = "group"
    last_activity: datetime | None = None


class Membership(WebexModel):
    id: WebexId
    room_id: WebexId
    person_id: WebexId
    person_email: str = ""
    is_moderator: bool = False
