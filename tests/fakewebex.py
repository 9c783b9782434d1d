"""A fake Webex REST API: a real aiohttp server on a loopback port, with state helpers and fault injection."""

from __future__ import annotations

import asyncio
import base64
import email.policy
import hashlib
import hmac
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any, Literal

import pytest_asyncio
from aiohttp import web

Json = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

API_PREFIX = "/v1"
MAX_MESSAGE_BYTES = 7439
MAX_FILE_BYTES = 100 * 1024 * 1024  # Webex's limit for one uploaded file
ADAPTIVE_CARD_TYPE = "application/vnd.microsoft.card.adaptive"
INVALID_TOKEN_MESSAGE = "The request requires a valid access token set in the Authorization request header."
NOT_FOUND_MESSAGE = "The requested resource could not be found."
DEFAULT_PAGE_SIZE = 100

_MENTION_TAG = re.compile(r"<spark-mention\b([^>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r"([\w-]+)\s*=\s*\"([^\"]*)\"")
_NO_BODY = object()
_TRACKING_ID = web.RequestKey("tracking_id", str)
_BODY = web.RequestKey("json", object)

_STATUS_MESSAGES = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def webex_id(kind: str, raw_uuid: str | None = None) -> str:
    """A REST id as Webex mints them: unpadded base64 of ciscospark://us/<KIND>/<uuid>."""
    raw = f"ciscospark://us/{kind}/{raw_uuid or uuid.uuid4()}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def bare_uuid(rest_id: str) -> str:
    """The trailing UUID of a base64 Webex id; a value that is not such an id comes back unchanged."""
    padded = rest_id + "=" * (-len(rest_id) % 4)
    try:
        decoded = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return rest_id
    if not decoded.startswith("ciscospark://"):
        return rest_id
    return decoded.rsplit("/", 1)[-1]


def sign(body: bytes, secret: str) -> str:
    """X-Spark-Signature: hex HMAC-SHA1 of the raw body with the webhook secret."""
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


def _now() -> str:
    # Webex timestamps carry milliseconds and a literal Z.
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart POST /messages."""

    filename: str | None
    content_type: str
    data: bytes


@dataclass
class Recorded:
    """One request as the fake saw it: `path` is relative to /v1, `status` None means the line was cut.

    A multipart body is in `form` (its text fields) and `files`, with `json` None."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    headers: dict[str, str]
    status: int | None = None
    form: dict[str, str] | None = None
    files: list[Upload] = field(default_factory=list)


def _parse_form(content_type: str, raw: bytes) -> tuple[dict[str, str], list[Upload]] | None:
    """A multipart/form-data body as its text fields and its files; None if it is not one."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw
    )
    if not message.is_multipart():
        return None
    fields: dict[str, str] = {}
    files: list[Upload] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if not isinstance(name, str) or not isinstance(payload, bytes):
            return None
        if name == "files":
            files.append(Upload(part.get_filename(), part.get_content_type(), payload))
        else:
            fields[name] = payload.decode("utf-8")
    return fields, files


@dataclass
class _Fault:
    method: str
    path_prefix: str
    kind: Literal["status", "reset", "invalid_json"]
    remaining: int
    status: int = 503
    retry_after: str | None = None
    body: str | None = None


@dataclass
class _Delay:
    method: str
    path_prefix: str
    seconds: float
    remaining: int | None


def _matches(method: str, path_prefix: str, request_method: str, request_path: str) -> bool:
    return method in ("*", request_method) and request_path.startswith(path_prefix)


class FakeWebex:
    """In-memory Webex. Every dict is keyed by REST id and holds exactly the JSON Webex would return."""

    def __init__(
        self,
        *,
        token: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.token = token or f"fake-token-{uuid.uuid4().hex}"
        self.org_id = webex_id("ORGANIZATION")
        self.app_id = webex_id("APPLICATION")
        # Lower it to make list endpoints page without the client asking for `max`.
        self.page_size = page_size
        self.base_url = ""
        self.people: dict[str, Json] = {}
        self.rooms: dict[str, Json] = {}
        self.messages: dict[str, Json] = {}
        self.attachment_actions: dict[str, Json] = {}
        self.memberships: dict[str, Json] = {}
        self.webhooks: dict[str, Json] = {}
        # Uploaded files by content id, served at /contents/{id} as Webex serves them.
        self.contents: dict[str, Upload] = {}
        # Webex takes files up to 100 MB; lower it to test the limit without sending 100 MB.
        self.max_file_bytes = max_file_bytes
        self.requests: list[Recorded] = []
        self._faults: list[_Fault] = []
        self._delays: list[_Delay] = []
        self._runner: web.AppRunner | None = None
        self.bot = self.add_person("helpdesk-bot@webex.bot", "Helpdesk Bot", type="bot")

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> str:
        # Room for the largest upload Webex takes, so the fake (not aiohttp) decides what is too large.
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_FILE_BYTES + 1024**2)
        app.router.add_routes(self._routes())
        # handler_cancellation: a client that gave up on a delayed call must not hold shutdown for a minute.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}{API_PREFIX}"
        return self.base_url

    async def close(self) -> None:
        self.clear_faults()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- state helpers ---------------------------------------------------------------------------

    def add_person(self, email: str, display_name: str, type: str = "person") -> Json:
        first, _, last = display_name.partition(" ")
        person: Json = {
            "id": webex_id("PEOPLE"),
            "emails": [email],
            "phoneNumbers": [],
            "displayName": display_name,
            "nickName": first,
            "firstName": first,
            "lastName": last,
            "orgId": self.org_id,
            "created": _now(),
            "status": "unknown",
            "type": type,
        }
        self.people[person["id"]] = person
        return person

    def add_room(self, type: Literal["group", "direct"] = "group", title: str = "Helpdesk") -> Json:
        """A space the bot is already a member of."""
        room: Json = {
            "id": webex_id("ROOM"),
            "title": title,
            "type": type,
            "isLocked": False,
            "lastActivity": _now(),
            "creatorId": self.bot["id"],
            "created": _now(),
            "ownerId": self.org_id,
        }
        self.rooms[room["id"]] = room
        self.add_membership(room["id"], self.bot["id"])
        return room

    def add_membership(self, room_id: str, person_id: str, *, is_moderator: bool = False) -> Json:
        room = self.rooms[room_id]
        person = self.people[person_id]
        for existing in self.memberships.values():
            if existing["roomId"] == room_id and existing["personId"] == person_id:
                return existing
        membership: Json = {
            "id": webex_id("MEMBERSHIP"),
            "roomId": room_id,
            "personId": person_id,
            "personEmail": person["emails"][0],
            "personDisplayName": person["displayName"],
            "personOrgId": person["orgId"],
            "isModerator": is_moderator,
            "isMonitor": False,
            "isRoomHidden": False,
            "roomType": room["type"],
            "created": _now(),
        }
        self.memberships[membership["id"]] = membership
        return membership

    def add_message(
        self,
        room_id: str,
        person: Json,
        text: str,
        html: str | None = None,
        parent_id: str | None = None,
        *,
        markdown: str | None = None,
    ) -> Json:
        """A message someone sent; mentionedPeople comes from the html's spark-mention tags, as in Webex."""
        room = self.rooms[room_id]
        # Posting implies membership, and is_member checks should agree with the messages tests create.
        self.add_membership(room_id, person["id"])
        message: Json = {
            "id": webex_id("MESSAGE"),
            "roomId": room_id,
            "roomType": room["type"],
            "text": text,
            "personId": person["id"],
            "personEmail": person["emails"][0],
            "created": _now(),
        }
        if markdown is not None:
            message["markdown"] = markdown
        if html is not None:
            message["html"] = html
            people, groups = self._mentions(html)
            if people:
                message["mentionedPeople"] = people
            if groups:
                message["mentionedGroups"] = groups
        if parent_id is not None:
            message["parentId"] = parent_id
        self.messages[message["id"]] = message
        return message

    def add_attachment_action(self, message_id: str, person: Json, inputs: Json) -> Json:
        message = self.messages[message_id]
        action: Json = {
            "id": webex_id("ATTACHMENT_ACTION"),
            "type": "submit",
            "messageId": message_id,
            "inputs": inputs,
            "personId": person["id"],
            "roomId": message["roomId"],
            "created": _now(),
        }
        self.attachment_actions[action["id"]] = action
        return action

    def add_webhook(
        self,
        name: str,
        target_url: str,
        resource: str,
        event: str,
        *,
        secret: str | None = None,
        filter: str | None = None,
        status: str = "active",
    ) -> Json:
        webhook: Json = {
            "id": webex_id("WEBHOOK"),
            "name": name,
            "targetUrl": target_url,
            "resource": resource,
            "event": event,
            "orgId": self.org_id,
            "createdBy": self.bot["id"],
            "appId": self.app_id,
            "ownedBy": "creator",
            "status": status,
            "created": _now(),
        }
        if secret is not None:
            webhook["secret"] = secret
        if filter is not None:
            webhook["filter"] = filter
        self.webhooks[webhook["id"]] = webhook
        return webhook

    def webhook_envelope(self, resource: str, event: str, data: Json, *, filter: str | None = None) -> Json:
        """The body Webex POSTs to a webhook's targetUrl; reuses a registered webhook when one matches."""
        webhook = next(
            (
                w
                for w in self.webhooks.values()
                if w["resource"] in (resource, "all") and w["event"] in (event, "all")
            ),
            None,
        )
        envelope: Json = {
            "id": webhook["id"] if webhook else webex_id("WEBHOOK", "00000000-0000-0000-0000-000000000001"),
            "name": webhook["name"] if webhook else "helpdesk-bot",
            "targetUrl": webhook["targetUrl"] if webhook else "https://bot.example.com/webhooks/webex",
            "resource": resource,
            "event": event,
            "orgId": self.org_id,
            "createdBy": self.bot["id"],
            "appId": self.app_id,
            "ownedBy": "creator",
            "status": "active",
            "created": webhook["created"] if webhook else _now(),
            "actorId": data.get("personId", self.bot["id"]),
            "data": data,
        }
        webhook_filter = filter if filter is not None else (webhook or {}).get("filter")
        if webhook_filter is not None:
            envelope["filter"] = webhook_filter
        return envelope

    def message_created_envelope(self, message: Json) -> Json:
        """A messages/created envelope for a stored message: ids only, no text, exactly as Webex sends."""
        keys = ("id", "roomId", "roomType", "personId", "personEmail", "created")
        return self.webhook_envelope("messages", "created", {k: message[k] for k in keys})

    def action_created_envelope(self, action: Json) -> Json:
        """An attachmentActions/created envelope for a stored action: no inputs, exactly as Webex sends."""
        keys = ("id", "type", "messageId", "personId", "roomId", "created")
        return self.webhook_envelope("attachmentActions", "created", {k: action[k] for k in keys})

    @property
    def posted_messages(self) -> list[Json]:
        """JSON bodies of the POST /messages calls that Webex accepted (uploads are in `uploads`)."""
        return [
            r.json
            for r in self.requests
            if r.method == "POST" and r.path == "/messages" and r.status == 200 and r.form is None
        ]

    @property
    def uploads(self) -> list[Recorded]:
        """The multipart POST /messages calls (a file with the message) that Webex accepted."""
        return [
            r
            for r in self.requests
            if r.method == "POST" and r.path == "/messages" and r.status == 200 and r.form is not None
        ]

    # ---- fault injection -------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_prefix: str,
        *,
        status: int = 503,
        times: int = 1,
        retry_after: str | None = None,
        body: str | None = None,
    ) -> None:
        """Answer the next `times` matching calls with `status` (paths relative to /v1, method "*" = any)."""
        self._faults.append(
            _Fault(method, path_prefix, "status", times, status=status, retry_after=retry_after, body=body)
        )

    def reset_next(self, method: str, path_prefix: str, times: int = 1) -> None:
        """Drop the connection unanswered. aiohttp itself resends an idempotent request once after this."""
        self._faults.append(_Fault(method, path_prefix, "reset", times))

    def invalid_json_next(self, method: str, path_prefix: str, times: int = 1) -> None:
        self._faults.append(_Fault(method, path_prefix, "invalid_json", times))

    def delay(self, method: str, path_prefix: str, seconds: float, times: int | None = None) -> None:
        """Stall matching calls before answering; times=None stalls every call until clear_faults()."""
        self._delays.append(_Delay(method, path_prefix, seconds, times))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._delays.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        for fault in self._faults:
            if fault.remaining > 0 and _matches(fault.method, fault.path_prefix, method, path):
                fault.remaining -= 1
                return fault
        return None

    def _take_delay(self, method: str, path: str) -> float:
        for delay in self._delays:
            if (delay.remaining is None or delay.remaining > 0) and _matches(
                delay.method, delay.path_prefix, method, path
            ):
                if delay.remaining is not None:
                    delay.remaining -= 1
                return delay.seconds
        return 0.0

    # ---- HTTP plumbing ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        tracking_id = f"ROUTER_{uuid.uuid4()}".upper()
        request[_TRACKING_ID] = tracking_id
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = _NO_BODY
        request[_BODY] = body
        path = request.path.removeprefix(API_PREFIX) or "/"
        form = (
            _parse_form(request.headers.get("Content-Type", ""), raw)
            if request.content_type == "multipart/form-data"
            else None
        )
        record = Recorded(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=None if body is _NO_BODY else body,
            headers=dict(request.headers),
            form=form[0] if form else None,
            files=form[1] if form else [],
        )
        self.requests.append(record)

        seconds = self._take_delay(request.method, path)
        if seconds:
            await asyncio.sleep(seconds)
        fault = self._take_fault(request.method, path)
        if fault is not None and fault.kind == "reset":
            assert request.transport is not None
            request.transport.close()
            # Nothing reaches the client; the response below only lets aiohttp finish the handler.
            return web.Response(status=500)
        if fault is not None:
            response = self._faulted(request, fault)
        elif not self._authorized(request):
            response = self._error(request, 401, INVALID_TOKEN_MESSAGE, errors=False)
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = self._error(request, 404, NOT_FOUND_MESSAGE)
            except web.HTTPMethodNotAllowed:
                response = self._error(
                    request, 405, "The requested method is not supported for this resource."
                )
        record.status = response.status
        response.headers["TrackingID"] = tracking_id
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip(), self.token)

    def _faulted(self, request: web.Request, fault: _Fault) -> web.StreamResponse:
        if fault.kind == "invalid_json":
            # Truncated JSON, as a proxy cutting a response short would produce.
            return web.Response(
                status=200, text='{"id": "Y2lzY29zcGFyazovL3VzL01FU1NBR0', content_type="application/json"
            )
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
        if fault.body is not None:
            return web.Response(
                status=fault.status, text=fault.body, headers=headers, content_type="text/plain"
            )
        message = _STATUS_MESSAGES.get(fault.status, "Injected failure")
        return self._error(request, fault.status, message, headers=headers)

    def _error(
        self,
        request: web.Request,
        status: int,
        message: str,
        *,
        errors: bool = True,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        body: Json = {"message": message}
        if errors:
            body["errors"] = [{"description": message}]
        body["trackingId"] = request[_TRACKING_ID]
        return web.json_response(body, status=status, headers=headers)

    def _page(self, request: web.Request, items: list[Json]) -> web.Response:
        """Webex-style paging: `max` items per page and an RFC 5988 Link header to the next page."""
        try:
            size = int(request.query.get("max", self.page_size))
            offset = int(request.query.get("cursor", "0"))
        except ValueError:
            return self._error(request, 400, "Invalid max or cursor parameter.")
        if size < 1 or offset < 0:
            return self._error(request, 400, "Invalid max or cursor parameter.")
        page = items[offset : offset + size]
        headers: dict[str, str] = {}
        if offset + size < len(items):
            next_url = request.url.update_query({"max": str(size), "cursor": str(offset + size)})
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response({"items": page}, headers=headers)

    def _routes(self) -> Iterable[web.RouteDef]:
        p = API_PREFIX
        return [
            web.get(f"{p}/people/{{person_id}}", self._get_person),
            web.get(f"{p}/messages", self._list_messages),
            web.post(f"{p}/messages", self._post_message),
            web.get(f"{p}/messages/{{message_id}}", self._get_message),
            web.delete(f"{p}/messages/{{message_id}}", self._delete_message),
            web.get(f"{p}/attachment/actions/{{action_id}}", self._get_attachment_action),
            web.get(f"{p}/memberships", self._list_memberships),
            web.get(f"{p}/webhooks", self._list_webhooks),
            web.post(f"{p}/webhooks", self._create_webhook),
            web.get(f"{p}/webhooks/{{webhook_id}}", self._get_webhook),
            web.put(f"{p}/webhooks/{{webhook_id}}", self._update_webhook),
            web.delete(f"{p}/webhooks/{{webhook_id}}", self._delete_webhook),
            web.get(f"{p}/rooms/{{room_id}}", self._get_room),
            web.get(f"{p}/contents/{{content_id}}", self._get_content),
        ]

    def _json_object(self, request: web.Request) -> Json | None:
        body = request[_BODY]
        return body if isinstance(body, dict) else None

    # ---- endpoints -------------------------------------------------------------------------------

    async def _get_person(self, request: web.Request) -> web.Response:
        person_id = request.match_info["person_id"]
        person = self.bot if person_id == "me" else self.people.get(person_id)
        if person is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.json_response(person)

    async def _get_content(self, request: web.Request) -> web.Response:
        upload = self.contents.get(request.match_info["content_id"])
        if upload is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.Response(
            body=upload.data,
            content_type=upload.content_type,
            headers={"Content-Disposition": f'attachment; filename="{upload.filename or "file"}"'},
        )

    async def _get_room(self, request: web.Request) -> web.Response:
        room = self.rooms.get(request.match_info["room_id"])
        if room is None:
            return self._error(request, 404, "Could not find a room with provided ID.")
        return web.json_response(room)

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.json_response(message)

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self.messages.get(request.match_info["message_id"])
        if message is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        if message["personId"] != self.bot["id"]:
            return self._error(request, 403, "Not authorized to delete this message.")
        del self.messages[message["id"]]
        return web.Response(status=204)

    async def _list_messages(self, request: web.Request) -> web.Response:
        room_id = request.query.get("roomId")
        if not room_id:
            return self._error(request, 400, "roomId is required.")
        if room_id not in self.rooms:
            return self._error(request, 404, "Could not find a room with provided ID.")
        parent_id = request.query.get("parentId")
        mentioned = request.query.get("mentionedPeople")
        if mentioned == "me":
            mentioned = self.bot["id"]
        found = [
            m
            for m in reversed(self.messages.values())  # Webex lists newest first
            if m["roomId"] == room_id
            and (parent_id is None or m.get("parentId") == parent_id)
            and (mentioned is None or mentioned in m.get("mentionedPeople", []))
        ]
        return self._page(request, found)

    async def _post_message(self, request: web.Request) -> web.Response:
        upload: Upload | None = None
        if request.content_type == "multipart/form-data":
            form = _parse_form(request.headers.get("Content-Type", ""), await request.read())
            if form is None:
                return self._error(request, 400, "The multipart body could not be read.")
            fields, uploads = form
            if len(uploads) > 1:
                return self._error(request, 400, "Only one file may be included with the message.")
            if uploads and len(uploads[0].data) > self.max_file_bytes:
                return self._error(request, 413, f"The file is larger than {self.max_file_bytes} bytes.")
            upload = uploads[0] if uploads else None
            body: Json | None = {**fields, **({"files": ["upload"]} if upload else {})}
        else:
            body = self._json_object(request)
        if body is None:
            return self._error(request, 400, "The request body must be a JSON object.")
        destinations = [key for key in ("roomId", "toPersonId", "toPersonEmail") if body.get(key)]
        if len(destinations) != 1:
            return self._error(
                request, 400, "Exactly one of roomId, toPersonId or toPersonEmail is required."
            )
        text, markdown, files = body.get("text"), body.get("markdown"), body.get("files")
        if not text and not markdown and not files:
            return self._error(request, 400, "text, markdown or files is required.")
        for name, value in (("text", text), ("markdown", markdown)):
            if value is not None and not isinstance(value, str):
                return self._error(request, 400, f"{name} must be a string.")
            if isinstance(value, str) and len(value.encode()) > MAX_MESSAGE_BYTES:
                return self._error(request, 400, f"The {name} is longer than {MAX_MESSAGE_BYTES} bytes.")
        attachments = body.get("attachments")
        if attachments is not None:
            problem = _attachment_problem(attachments)
            if problem:
                return self._error(request, 400, problem)

        direct_to: Json | None = None
        if "roomId" in destinations:
            room = self.rooms.get(body["roomId"])
            if room is None:
                return self._error(request, 404, "Could not find a room with provided ID.")
        else:
            if body.get("toPersonId"):
                direct_to = self.people.get(body["toPersonId"])
                if direct_to is None:
                    return self._error(request, 404, "Could not find a person with provided ID.")
            else:
                direct_to = self._person_by_email(str(body["toPersonEmail"]))
            room = self._direct_room_with(direct_to)

        parent_id = body.get("parentId")
        if parent_id is not None:
            parent = self.messages.get(parent_id)
            if parent is None or parent["roomId"] != room["id"]:
                return self._error(request, 400, "Invalid parentId: no such message in this room.")
            if parent.get("parentId"):
                return self._error(request, 400, "Invalid parentId: cannot reply to a reply.")

        message: Json = {
            "id": webex_id("MESSAGE"),
            "roomId": room["id"],
            "roomType": room["type"],
            "text": text if text else markdown or "",
            "personId": self.bot["id"],
            "personEmail": self.bot["emails"][0],
            "created": _now(),
        }
        if markdown:
            message["markdown"] = markdown
        if parent_id is not None:
            message["parentId"] = parent_id
        if attachments:
            message["attachments"] = attachments
        if upload is not None:
            content_id = webex_id("CONTENT")
            self.contents[content_id] = upload
            message["files"] = [f"{self.base_url}/contents/{content_id}"]
        elif files:
            message["files"] = files
        if direct_to is not None:
            message["toPersonId"] = direct_to["id"]
            message["toPersonEmail"] = direct_to["emails"][0]
        self.messages[message["id"]] = message
        return web.json_response(message)

    async def _get_attachment_action(self, request: web.Request) -> web.Response:
        action = self.attachment_actions.get(request.match_info["action_id"])
        if action is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.json_response(action)

    async def _list_memberships(self, request: web.Request) -> web.Response:
        room_id = request.query.get("roomId")
        person_id = request.query.get("personId")
        person_email = request.query.get("personEmail")
        if room_id is not None and room_id not in self.rooms:
            return self._error(request, 404, "Could not find a room with provided ID.")
        found = [
            m
            for m in self.memberships.values()
            if (room_id is None or m["roomId"] == room_id)
            and (person_id is None or m["personId"] == person_id)
            and (person_email is None or m["personEmail"] == person_email)
        ]
        return self._page(request, found)

    async def _list_webhooks(self, request: web.Request) -> web.Response:
        return self._page(request, list(self.webhooks.values()))

    async def _create_webhook(self, request: web.Request) -> web.Response:
        body = self._json_object(request)
        if body is None:
            return self._error(request, 400, "The request body must be a JSON object.")
        missing = [key for key in ("name", "targetUrl", "resource", "event") if not body.get(key)]
        if missing:
            return self._error(request, 400, f"Missing required field(s): {', '.join(missing)}.")
        webhook = self.add_webhook(
            body["name"],
            body["targetUrl"],
            body["resource"],
            body["event"],
            secret=body.get("secret"),
            filter=body.get("filter"),
        )
        return web.json_response(webhook)

    async def _get_webhook(self, request: web.Request) -> web.Response:
        webhook = self.webhooks.get(request.match_info["webhook_id"])
        if webhook is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.json_response(webhook)

    async def _update_webhook(self, request: web.Request) -> web.Response:
        webhook = self.webhooks.get(request.match_info["webhook_id"])
        if webhook is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        body = self._json_object(request)
        if body is None:
            return self._error(request, 400, "The request body must be a JSON object.")
        if not body.get("name") or not body.get("targetUrl"):
            return self._error(request, 400, "name and targetUrl are required.")
        status = body.get("status")
        if status is not None and status not in ("active", "inactive"):
            return self._error(request, 400, "status must be 'active' or 'inactive'.")
        webhook["name"] = body["name"]
        webhook["targetUrl"] = body["targetUrl"]
        if body.get("secret") is not None:
            webhook["secret"] = body["secret"]
        if status is not None:
            webhook["status"] = status
        return web.json_response(webhook)

    async def _delete_webhook(self, request: web.Request) -> web.Response:
        if self.webhooks.pop(request.match_info["webhook_id"], None) is None:
            return self._error(request, 404, NOT_FOUND_MESSAGE)
        return web.Response(status=204)

    # ---- internals -------------------------------------------------------------------------------

    def _person_by_email(self, email: str) -> Json:
        for person in self.people.values():
            if email.lower() in (e.lower() for e in person["emails"]):
                return person
        # Webex invites an unknown address instead of failing, which leaves a person behind.
        return self.add_person(email, email.split("@", 1)[0])

    def _direct_room_with(self, person: Json) -> Json:
        for room in self.rooms.values():
            if room["type"] == "direct" and any(
                m["roomId"] == room["id"] and m["personId"] == person["id"] for m in self.memberships.values()
            ):
                return room
        room = self.add_room("direct", title=person["displayName"])
        self.add_membership(room["id"], person["id"])
        return room

    def _mentions(self, html: str) -> tuple[list[str], list[str]]:
        people: list[str] = []
        groups: list[str] = []
        for tag in _MENTION_TAG.finditer(html):
            attributes = dict(_ATTRIBUTE.findall(tag.group(1)))
            kind = attributes.get("data-object-type")
            if kind == "person" and attributes.get("data-object-id"):
                person_id = self._rest_person_id(attributes["data-object-id"])
                if person_id not in people:
                    people.append(person_id)
            elif kind == "groupMention" and attributes.get("data-group-type"):
                groups.append(attributes["data-group-type"])
        return people, groups

    def _rest_person_id(self, mention_id: str) -> str:
        # The html may carry the bare UUID, but mentionedPeople always lists REST ids.
        for person_id in self.people:
            if mention_id in (person_id, bare_uuid(person_id)):
                return person_id
        return mention_id if bare_uuid(mention_id) != mention_id else webex_id("PEOPLE", mention_id)


def _attachment_problem(attachments: Any) -> str | None:
    if not isinstance(attachments, list):
        return "attachments must be an array."
    if len(attachments) > 1:
        return "Only one attachment per message is supported."
    for attachment in attachments:
        if not isinstance(attachment, dict) or attachment.get("contentType") != ADAPTIVE_CARD_TYPE:
            return f"Attachment contentType must be {ADAPTIVE_CARD_TYPE}."
        if not isinstance(attachment.get("content"), dict):
            return "Attachment content must be an Adaptive Card object."
    return None


@pytest_asyncio.fixture
async def fake_webex() -> AsyncIterator[FakeWebex]:
    """A started FakeWebex; use via `pytest_plugins = ["tests.fakewebex"]` in a test module or conftest."""
    fake = FakeWebex()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()
