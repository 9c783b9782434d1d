"""HTTP routes of local mode: the playground page, user messages and card submits, and reading the spaces."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot import cards
from bot.keys import CONTEXT, INBOX, LOCAL, RENDERER, WORKER
from bot.local.renderer import Renderer, default_cache_dir
from bot.local.transport import AGENT_EMAIL, EMPLOYEE_EMAIL, FILES_PATH, LOCAL_HELPDESK_ROOM, LocalWebex
from bot.store import StoreUnavailable

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_WAIT_SECONDS = 25.0  # a long poll answers before common proxy and browser timeouts
# Cards carry knowledge text; markdown-it escapes HTML, and this keeps anything else from running.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' https: data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
EMAIL = r"^[^@\s]+@[^@\s]+$"


class _UserMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=7000)
    email: str = Field(default=EMPLOYEE_EMAIL, max_length=200, pattern=EMAIL)


class _UserAction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_id: str = Field(min_length=1, max_length=200)
    inputs: dict[str, Any]
    email: str = Field(default=EMPLOYEE_EMAIL, max_length=200, pattern=EMAIL)


class _Poll(BaseModel):
    model_config = ConfigDict(extra="forbid")
    room: str | None = Field(default=None, min_length=1, max_length=200)
    email: str | None = Field(default=None, max_length=200, pattern=EMAIL)
    after: int = Field(default=0, ge=0)
    wait: float = Field(default=0.0, ge=0.0, le=MAX_WAIT_SECONDS)


def add_local_routes(app: web.Application, *, renderer: Renderer | None = None) -> None:
    """Everything local mode serves. Replace app[RENDERER] before startup to change the cache or npm."""
    app[RENDERER] = renderer or Renderer()
    app.router.add_get("/", page)
    app.router.add_static("/playground/", STATIC_DIR, follow_symlinks=False)
    app.router.add_get("/local/config", get_config)
    app.router.add_post("/local/messages", post_message)
    app.router.add_post("/local/actions", post_action)
    app.router.add_get("/local/messages", list_messages)
    app.router.add_get("/local/articles", list_articles)
    app.router.add_get("/local/articles/{article_id}/card", article_card)
    app.router.add_get("/local/renderer", renderer_status)
    app.router.add_get(FILES_PATH + "{file_id}", uploaded_file)
    app.router.add_get("/vendor/{name}", vendor_file)
    app.cleanup_ctx.append(_renderer_lifetime)
    app.on_shutdown.append(_release_long_polls)


async def _renderer_lifetime(app: web.Application) -> AsyncIterator[None]:
    renderer = app[RENDERER]
    if renderer.cache_dir is None:
        settings = app[CONTEXT].settings
        # Settings fields read when config.py has them (RENDERER_CACHE_DIR, XDG_CACHE_HOME).
        explicit = settings.renderer_cache_dir
        renderer.cache_dir = explicit or default_cache_dir(settings.xdg_cache_home)
    renderer.start()
    try:
        yield
    finally:
        await renderer.stop()


async def _release_long_polls(app: web.Application) -> None:
    local = app.get(LOCAL)
    if local is not None:
        local.close()


def _local(request: web.Request) -> LocalWebex:
    return request.app[LOCAL]


def _bad_request(exc: ValidationError) -> web.Response:
    # No "input" in the answer: for a body that is not JSON it is raw bytes, and it echoes the request.
    problems = exc.errors(include_url=False, include_context=False, include_input=False)
    summary = "; ".join(f"{'.'.join(map(str, p['loc'])) or 'body'}: {p['msg']}" for p in problems)
    return web.json_response({"error": summary, "problems": problems}, status=400)


async def page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


async def get_config(request: web.Request) -> web.Response:
    """What the page needs to know: who it speaks as, and which space is which."""
    local = _local(request)
    return web.json_response(
        {
            "bot": {"id": local.me.id, "name": local.me.display_name},
            "employee": {"email": EMPLOYEE_EMAIL, "room": local.direct_room(EMPLOYEE_EMAIL)},
            "helpdesk": {"email": AGENT_EMAIL, "room": LOCAL_HELPDESK_ROOM},
        }
    )


async def _enqueue(request: web.Request, resource: str, data: dict[str, Any]) -> web.Response:
    # The same inbox, worker and handlers as a real webhook: local mode is a transport, not a second path.
    local = _local(request)
    try:
        envelope = json.dumps(local.envelope(resource, data))
        await request.app[INBOX].enqueue(data["id"], resource, envelope)
    except StoreUnavailable:
        return web.json_response({"error": "storage unavailable"}, status=503)
    request.app[WORKER].notify()
    return web.json_response({"id": data["id"], "roomId": data["roomId"], "status": "queued"})


async def post_message(request: web.Request) -> web.Response:
    try:
        body = _UserMessage.model_validate_json(await request.read())
    except ValidationError as exc:
        return _bad_request(exc)
    message = _local(request).user_message(body.text, body.email)
    data = {
        "id": message.id,
        "roomId": message.room_id,
        "roomType": message.room_type,
        "personId": message.person_id,
        "personEmail": message.person_email,
        "created": message.created.isoformat() if message.created else None,
    }
    return await _enqueue(request, "messages", data)


async def post_action(request: web.Request) -> web.Response:
    try:
        body = _UserAction.model_validate_json(await request.read())
    except ValidationError as exc:
        return _bad_request(exc)
    action = _local(request).user_action(body.message_id, body.inputs, body.email)
    if action is None:
        return web.json_response({"error": "no such message"}, status=404)
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
    """?room=ID or ?email=E (that person's direct space; default: the playground's employee).

    ?after=CURSOR returns only newer messages, and ?wait=SECONDS holds the answer until there is one.
    """
    try:
        query = _Poll.model_validate(dict(request.query))
    except ValidationError as exc:
        return _bad_request(exc)
    local = _local(request)
    if query.room is not None and query.room not in local.rooms:
        return web.json_response({"error": "no such room"}, status=404)
    room = query.room or local.direct_room(query.email or EMPLOYEE_EMAIL)
    found, cursor = local.messages_after(room, query.after)
    if not found and query.wait > 0:
        try:
            async with asyncio.timeout(query.wait):
                found, cursor = await local.wait_for_messages(room, query.after)
        except TimeoutError:
            found, cursor = local.messages_after(room, query.after)
    items = [m.model_dump(mode="json", by_alias=True) for m in found]
    return web.json_response({"room": room, "items": items, "cursor": cursor})


async def list_articles(request: web.Request) -> web.Response:
    kb = request.app[CONTEXT].knowledge.kb
    items = [{"id": a.id, "title": a.title, "kind": a.kind, "code": a.code} for a in kb.articles.values()]
    return web.json_response({"items": items})


async def article_card(request: web.Request) -> web.Response:
    """The card the bot would send for one article, built from the knowledge loaded now."""
    kb = request.app[CONTEXT].knowledge.kb
    article = kb.article(request.match_info["article_id"])
    if article is None:
        return web.json_response({"error": "no such article"}, status=404)
    message = cards.article_card(article, kb, thread_id="preview")
    return web.json_response({"id": article.id, "markdown": message.markdown, "card": message.card})


async def uploaded_file(request: web.Request) -> web.Response:
    """A file the bot posted (the stats chart), as Webex would serve it to a client."""
    file = _local(request).files.get(request.match_info["file_id"])
    if file is None:
        return web.json_response({"error": "no such file"}, status=404)
    disposition = f'inline; filename="{file.filename}"'
    return web.Response(
        body=file.data,
        content_type=file.content_type,
        headers={"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"},
    )


async def renderer_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RENDERER].describe())


async def vendor_file(request: web.Request) -> web.StreamResponse:
    path = request.app[RENDERER].vendor_path(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound(text="the card renderer is not available: see GET /local/renderer")
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
