"""HTTP routes of local mode: post a message or a card submit as a user would, and read the conversation."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.keys import CONTEXT, WORKER
from bot.local import LOCAL_ROOM, LocalWebex
from bot.store import StoreUnavailable


class _UserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=7000)
    email: str = Field(default="you@example.com", max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")


class _UserAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any]
    email: str = Field(default="you@example.com", max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")


def add_local_routes(app: web.Application) -> None:
    app.router.add_post("/local/messages", post_message)
    app.router.add_post("/local/actions", post_action)
    app.router.add_get("/local/messages", list_messages)


def _local(request: web.Request) -> LocalWebex:
    from bot.app import LOCAL

    return request.app[LOCAL]


async def _enqueue(request: web.Request, resource: str, data: dict[str, Any]) -> web.Response:
    # The same inbox, worker and handlers as a real webhook: local mode is a transport, not a second path.
    local, ctx = _local(request), request.app[CONTEXT]
    try:
        await ctx.store.enqueue_event(data["id"], resource, local.envelope(resource, data))
    except StoreUnavailable:
        return web.json_response({"error": "storage unavailable"}, status=503)
    request.app[WORKER].notify()
    return web.json_response({"id": data["id"], "status": "queued"})


async def post_message(request: web.Request) -> web.Response:
    try:
        body = _UserMessage.model_validate_json(await request.read())
    except ValidationError as exc:
        return web.json_response({"error": exc.errors(include_url=False, include_context=False)}, status=400)
    message = _local(request).user_message(body.text, body.email)
    data = {
        "id": message.id,
        "roomId": message.room_id,
        "roomType": "direct",
        "personId": message.person_id,
        "personEmail": message.person_email,
        "created": message.created.isoformat() if message.created else None,
    }
    return await _enqueue(request, "messages", data)


async def post_action(request: web.Request) -> web.Response:
    try:
        body = _UserAction.model_validate_json(await request.read())
    except ValidationError as exc:
        return web.json_response({"error": exc.errors(include_url=False, include_context=False)}, status=400)
    action = _local(request).user_action(body.message_id, body.inputs, body.email)
    data = {
        "id": action.id,
        "type": "submit",
        "messageId": action.message_id,
        "personId": action.person_id,
        "roomId": action.room_id,
        "created": action.created.isoformat() if action.created else None,
    }
    return await _enqueue(request, "attachmentActions", data)


async def list_messages(request: web.Request) -> web.Response:
    room = request.query.get("room", LOCAL_ROOM)
    messages = [
        m.model_dump(mode="json", by_alias=True)
        for m in _local(request).messages.values()
        if m.room_id == room
    ]
    return web.json_response({"items": messages})
