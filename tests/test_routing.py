"""Mention stripping, routing and threading: pure functions on Webex models."""

from __future__ import annotations

import base64

import pytest

from bot.models import Message, Person
from bot.routing import bare_id, reply_parent, route, strip_mention

UUID = "8b3c6d0e-1f2a-4b5c-9d8e-7f6a5b4c3d2e"
BOT_ID = base64.b64encode(f"ciscospark://us/PEOPLE/{UUID}".encode()).decode().rstrip("=")
ME = Person(id=BOT_ID, display_name="Helpdesk Bot", first_name="Helpdesk", type="bot")


def message(**fields: object) -> Message:
    base: dict[str, object] = {"id": "m1", "roomId": "r1", "roomType": "group", "personId": "p1", "text": ""}
    return Message.model_validate(base | fields)


def test_bare_id_decodes_rest_ids_and_passes_uuids() -> None:
    assert bare_id(BOT_ID) == UUID
    assert bare_id(UUID) == UUID
    assert bare_id("not base64 !!") == "not base64 !!"


@pytest.mark.parametrize("mention_id", [BOT_ID, UUID])
def test_mention_is_stripped_by_id(mention_id: str) -> None:
    html = (
        f'<p><spark-mention data-object-type="person" data-object-id="{mention_id}">Helpdesk</spark-mention>'
        " error 1000:1002 &amp; blank</p>"
    )
    assert (
        strip_mention(message(text="Helpdesk error 1000:1002 & blank", html=html), ME)
        == "error 1000:1002 & blank"
    )


def test_other_mentions_keep_their_names() -> None:
    html = (
        f'<spark-mention data-object-type="person" data-object-id="{UUID}">Helpdesk</spark-mention> ask '
        '<spark-mention data-object-type="person" data-object-id="someone-else">Alex</spark-mention> too'
    )
    assert strip_mention(message(text="x", html=html), ME) == "ask Alex too"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Helpdesk Bot blank screen", "blank screen"),
        ("Helpdesk, help", "help"),
        ("blank screen", "blank screen"),
    ],
)
def test_display_name_prefix_fallback(text: str, expected: str) -> None:
    assert strip_mention(message(text=text), ME) == expected


@pytest.mark.parametrize(
    ("text", "kind", "step"),
    [
        ("help", "help", 0),
        ("HELP!", "help", 0),
        ("", "empty", 0),
        ("okta setup", "setup", 0),
        ("SAML setup", "setup", 0),
        ("setup step 7", "setup", 6),
        ("blank screen", "triage", 0),
        ("how do I set up okta", "triage", 0),
    ],
)
def test_route(text: str, kind: str, step: int) -> None:
    r = route(text)
    assert (r.kind, r.step) == (kind, step)


def test_reply_parent() -> None:
    assert reply_parent(message(roomType="direct")) is None
    assert reply_parent(message()) == "m1"
    assert reply_parent(message(parentId="top")) == "top"


def test_every_route_kind_and_every_submit_type_has_a_handler() -> None:
    from typing import get_args

    from bot.cards.submit import SubmitData
    from bot.handlers import commands, submits
    from bot.routing import RouteKind

    assert [k for k in get_args(RouteKind) if k not in commands] == []
    submit_types = get_args(get_args(SubmitData)[0])  # Annotated[A | B | ..., discriminator]
    assert submit_types, "SubmitData should be a union of the submit models"
    assert [t.__name__ for t in submit_types if t not in submits] == []


def test_a_router_refuses_two_handlers_for_one_key() -> None:
    from bot.dispatch import Router

    router: Router[str, int] = Router()
    router.register("a")(1)
    with pytest.raises(ValueError, match="already has a handler"):
        router.register("a")(2)
    assert Router(router).get("a") == 1 and router.get("b") is None


@pytest.mark.parametrize(
    ("text", "kind", "days"),
    [
        ("gaps", "gaps", 7),
        ("Gaps 30d", "gaps", 30),
        ("knowledge gaps last 14 days", "gaps", 14),
        ("gaps 999d", "gaps", 365),
        ("unmatched", "unmatched", 7),
        ("stats 30d", "stats", 30),
        ("mind the gaps in my screen", "triage", 7),
    ],
)
def test_gaps_has_its_own_route_with_a_period(text: str, kind: str, days: int) -> None:
    r = route(text)
    assert (r.kind, r.days) == (kind, days)
