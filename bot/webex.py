"""Async Webex REST client with retries, 429 handling and typed errors."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import aiohttp
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ValidationError
from yarl import URL

from bot.models import AttachmentAction, Membership, Message, Person, Room, Webhook

logger = logging.getLogger(__name__)

ModelT = TypeVar("ModelT", bound=BaseModel)

OnResponse = Callable[[str, str, int | str], None]
Sleep = Callable[[float], Awaitable[None]]

# 501/505 and friends will not heal by retrying; these are the gateway/overload family.
RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})
# A runaway Link chain (or a server bug that links a page to itself) must not loop forever.
MAX_PAGES = 1000


class WebexError(Exception):
    """A Webex API call failed; carries what support needs to trace it (method, path, status, trackingId)."""

    def __init__(
        self,
        message: str,
        *,
        method: str,
        path: str,
        status: int | None = None,
        tracking_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.path = path
        self.status = status
        self.tracking_id = tracking_id

    def __str__(self) -> str:
        status = self.status if self.status is not None else "no response"
        detail = " ".join(self.message.split())  # one line, whatever the server sent
        return f"Webex {self.method} {self.path} -> {status}: {detail} (trackingId={self.tracking_id or '-'})"


class WebexAuthError(WebexError):
    """401/403: the token is invalid or lacks the scope; retrying cannot help."""


class WebexNotFound(WebexError):
    """404: the resource does not exist or the bot cannot see it."""


class WebexBadRequest(WebexError):
    """Any other 4xx: Webex rejected what we sent."""


class WebexRateLimited(WebexError):
    """429 still returned after every allowed attempt."""


class WebexUnavailable(WebexError):
    """5xx, connection failures or timeouts after every allowed attempt."""


class WebexMaybePosted(WebexError):
    """A POST went out but its answer was lost (reset, timeout, garbled body): it may have taken effect.
    Not retried here; the caller checks whether it happened before trying again."""


class WebexBadResponse(WebexError):
    """2xx whose body is not JSON or does not fit the expected model."""


def parse_retry_after(value: str | None, *, default: float, maximum: float) -> float:
    """Seconds to wait for a Retry-After header; unusable values give `default`, all capped at `maximum`."""
    seconds = _retry_after_seconds(value)
    if seconds is None:
        seconds = default
    return max(0.0, min(seconds, maximum))


def _retry_after_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _seconds_until_http_date(text)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _seconds_until_http_date(text: str) -> float | None:
    # RFC 9110 also allows an HTTP-date; Webex sends seconds, but proxies in between may not.
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: Any
    next_url: URL | None
    tracking_id: str | None


class WebexClient:
    """Talks to the Webex REST API over a caller-owned aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_default: float = 5.0,
        retry_after_max: float = 60.0,
        on_response: OnResponse | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._session = session
        self._base = URL(base_url.rstrip("/"))
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
        }
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._retry_after_default = retry_after_default
        self._retry_after_max = retry_after_max
        self._on_response = on_response
        self._sleep = sleep
        # Jitter only spreads retries out; it needs no cryptographic strength.
        self._rng = rng or random.Random()  # noqa: S311 - backoff jitter, not a secret

    def __repr__(self) -> str:
        # Spelled out so the token in self._headers can never leak through a repr in a log line.
        return f"WebexClient(base_url={str(self._base)!r})"

    # ---- endpoints -------------------------------------------------------------------------------

    async def get_me(self) -> Person:
        reply = await self._call("GET", "/people/me", "/people/me")
        return self._parse(Person, reply.body, "GET", "/people/me", reply)

    async def get_person(self, person_id: str) -> Person:
        path = f"/people/{_quote(person_id)}"
        reply = await self._call("GET", path, "/people/{id}")
        return self._parse(Person, reply.body, "GET", path, reply)

    async def get_message(self, message_id: str) -> Message:
        path = f"/messages/{_quote(message_id)}"
        reply = await self._call("GET", path, "/messages/{id}")
        return self._parse(Message, reply.body, "GET", path, reply)

    async def post_message(self, body: Mapping[str, Any]) -> Message:
        """POST /messages with the body as the cards built it (OutgoingMessage.to_webex). A timeout may mean
        it was posted anyway, so callers dedupe on their side."""
        check_message_body(body)
        reply = await self._call("POST", "/messages", "/messages", json_body=dict(body))
        return self._parse(Message, reply.body, "POST", "/messages", reply)

    async def post_message_with_file(self, body: Mapping[str, Any], file: FileUpload) -> Message:
        """POST /messages as multipart/form-data: the body's fields and one file, as Webex takes uploads."""
        check_file_body(body, file)

        def form() -> aiohttp.FormData:
            # A FormData is spent once sent, so every attempt builds its own.
            data = aiohttp.FormData()
            for key, value in body.items():
                data.add_field(key, str(value))
            data.add_field("files", file.data, filename=file.filename, content_type=file.content_type)
            return data

        reply = await self._send(
            "POST", self._url("/messages"), "/messages", "/messages", json_body=None, form=form
        )
        return self._parse(Message, reply.body, "POST", "/messages", reply)

    async def list_messages(
        self, *, room_id: str, parent_id: str | None = None, max: int = 50
    ) -> list[Message]:
        """Recent messages of a room (or of one thread), newest first. Bots may only list some rooms."""
        params = {"roomId": room_id, "max": str(max)}
        if parent_id:
            params["parentId"] = parent_id
        reply = await self._send(
            "GET", self._url("/messages").with_query(params), "/messages", "/messages", json_body=None
        )
        body = reply.body
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise WebexBadResponse("list response has no 'items' array", method="GET", path="/messages")
        return [self._parse(Message, item, "GET", "/messages", reply) for item in body["items"]]

    async def get_attachment_action(self, action_id: str) -> AttachmentAction:
        path = f"/attachment/actions/{_quote(action_id)}"
        reply = await self._call("GET", path, "/attachment/actions/{id}")
        return self._parse(AttachmentAction, reply.body, "GET", path, reply)

    async def list_memberships(self, *, room_id: str, person_id: str | None = None) -> list[Membership]:
        params = {"roomId": room_id}
        if person_id is not None:
            params["personId"] = person_id
        return await self._list(Membership, "/memberships", params)

    async def is_member(self, room_id: str, person_id: str) -> bool:
        """Whether the person is in the room; errors (e.g. the bot left the room) propagate."""
        memberships = await self.list_memberships(room_id=room_id, person_id=person_id)
        return any(m.person_id == person_id for m in memberships)

    async def list_webhooks(self) -> list[Webhook]:
        return await self._list(Webhook, "/webhooks", {})

    async def update_webhook(
        self,
        webhook_id: str,
        *,
        name: str,
        target_url: str,
        secret: str | None = None,
        status: Literal["active", "inactive"] | None = None,
    ) -> Webhook:
        """PUT the webhook; `status="active"` is how a webhook Webex disabled is turned back on."""
        path = f"/webhooks/{_quote(webhook_id)}"
        payload: dict[str, Any] = {"name": name, "targetUrl": target_url}
        if secret is not None:
            payload["secret"] = secret
        if status is not None:
            payload["status"] = status
        reply = await self._call("PUT", path, "/webhooks/{id}", json_body=payload)
        return self._parse(Webhook, reply.body, "PUT", path, reply)

    async def list_rooms_by_activity(self, *, max: int = 100) -> list[Room]:
        """The bot's spaces, most recently active first; one page, since a catch-up wants only the recent."""
        url = self._url("/rooms").with_query({"sortBy": "lastactivity", "max": str(max)})
        reply = await self._send("GET", url, "/rooms", "/rooms", json_body=None)
        return self._items(Room, reply, "/rooms")

    async def list_mentions(self, *, room_id: str, max: int = 50) -> list[Message]:
        """Messages of a group space that mention the bot, newest first: all that a bot may list there."""
        url = self._url("/messages").with_query({"roomId": room_id, "mentionedPeople": "me", "max": str(max)})
        reply = await self._send("GET", url, "/messages", "/messages", json_body=None)
        return self._items(Message, reply, "/messages")

    def _items(self, model: type[ModelT], reply: _Reply, path: str) -> list[ModelT]:
        body = reply.body
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise WebexBadResponse("list response has no 'items' array", method="GET", path=path)
        return [self._parse(model, item, "GET", path, reply) for item in body["items"]]

    # ---- plumbing --------------------------------------------------------------------------------

    async def _list(self, model: type[ModelT], path: str, params: Mapping[str, str]) -> list[ModelT]:
        items: list[ModelT] = []
        url: URL | None = self._url(path).with_query(params)
        seen: set[URL] = set()
        while url is not None:
            if url in seen or len(seen) >= MAX_PAGES:
                raise WebexBadResponse("pagination does not end", method="GET", path=self._display_path(url))
            seen.add(url)
            display = self._display_path(url)
            reply = await self._send("GET", url, path, display, json_body=None)
            body = reply.body
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise WebexBadResponse(
                    "list response has no 'items' array",
                    method="GET",
                    path=display,
                    status=reply.status,
                    tracking_id=reply.tracking_id,
                )
            items.extend(self._parse(model, item, "GET", display, reply) for item in body["items"])
            url = self._checked_next(reply.next_url, params, display, reply.status)
        return items

    def _checked_next(
        self, next_url: URL | None, params: Mapping[str, str], display: str, status: int
    ) -> URL | None:
        if next_url is None:
            return None
        # The bearer token goes with every request, so never follow a link off the API's origin.
        if next_url.origin() != self._base.origin():
            raise WebexBadResponse(
                f"refusing to follow next link to another origin {next_url.origin()}",
                method="GET",
                path=display,
                status=status,
            )
        # Webex has shipped next links carrying "max=null", which the next call then rejects.
        if next_url.query.get("max") == "null":
            next_url = next_url.without_query_params("max")
        # Webex has also dropped filters from next links; without roomId a membership list spans every room.
        missing = {key: value for key, value in params.items() if key not in next_url.query}
        return next_url.update_query(missing) if missing else next_url

    def _display_path(self, url: URL) -> str:
        base_path = self._base.path.rstrip("/")
        path = url.raw_path
        if base_path and path.startswith(base_path):
            path = path[len(base_path) :]
        return path or "/"

    async def _call(
        self, method: str, path: str, label: str, *, json_body: Mapping[str, Any] | None = None
    ) -> _Reply:
        return await self._send(method, self._url(path), label, path, json_body=json_body)

    def _url(self, path: str) -> URL:
        # `path` is already percent-quoted, so it is joined raw rather than re-encoded.
        return self._base.with_path(self._base.raw_path.rstrip("/") + path, encoded=True)

    async def _send(
        self,
        method: str,
        url: URL,
        label: str,
        display: str,
        *,
        json_body: Mapping[str, Any] | None,
        form: Callable[[], aiohttp.FormData] | None = None,
    ) -> _Reply:
        """One logical call: retries 429, 5xx and transport failures, fails fast on other 4xx."""
        last_error: WebexError | None = None
        for attempt in range(self._max_attempts):
            try:
                async with self._session.request(
                    method,
                    url,
                    json=json_body,
                    data=form() if form is not None else None,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=self._timeout),
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    headers = resp.headers
                    next_link = resp.links.get("next")
            except aiohttp.ClientConnectorError as exc:
                # Nothing reached the server: safe to retry any method.
                self._report(method, label, "error")
                last_error = WebexUnavailable(
                    f"connection failed: {type(exc).__name__}: {exc}", method=method, path=display
                )
                delay = self._backoff(attempt)
            except (TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                self._report(method, label, "timeout" if isinstance(exc, TimeoutError) else "error")
                if method == "POST":
                    # The request may have been stored; a blind retry could post the message twice.
                    raise WebexMaybePosted(
                        f"no answer ({type(exc).__name__}); the request may have taken effect",
                        method=method,
                        path=display,
                    ) from exc
                if isinstance(exc, TimeoutError):
                    last_error = WebexUnavailable(
                        f"timed out after {self._timeout}s", method=method, path=display
                    )
                else:
                    last_error = WebexUnavailable(
                        f"connection failed: {type(exc).__name__}: {exc}", method=method, path=display
                    )
                delay = self._backoff(attempt)
            except aiohttp.ClientError as exc:
                # Invalid URL and the like: a bug on our side that no retry will fix.
                self._report(method, label, "error")
                raise WebexError(
                    f"request failed: {type(exc).__name__}: {exc}", method=method, path=display
                ) from exc
            else:
                self._report(method, label, status)
                if 200 <= status < 300:
                    try:
                        body = self._decode(raw, method, display, status, headers)
                    except WebexBadResponse as exc:
                        if method == "POST":
                            raise WebexMaybePosted(
                                str(exc.message), method=method, path=display, status=status
                            ) from exc
                        raise
                    return _Reply(status, body, _link_url(next_link), headers.get("TrackingID"))
                message, tracking_id = _error_details(raw, headers)
                retry_after = headers.get("Retry-After")
                if status == 429:
                    last_error = WebexRateLimited(
                        message, method=method, path=display, status=status, tracking_id=tracking_id
                    )
                    delay = parse_retry_after(
                        retry_after, default=self._retry_after_default, maximum=self._retry_after_max
                    )
                elif status in RETRYABLE_STATUSES:
                    last_error = WebexUnavailable(
                        message, method=method, path=display, status=status, tracking_id=tracking_id
                    )
                    # An overloaded server that says when to come back knows better than our backoff.
                    hinted = _retry_after_seconds(retry_after)
                    delay = (
                        min(hinted, self._retry_after_max) if hinted is not None else self._backoff(attempt)
                    )
                else:
                    error = _error_for_status(status)(
                        message, method=method, path=display, status=status, tracking_id=tracking_id
                    )
                    logger.warning("%s", error)
                    raise error
            if attempt + 1 >= self._max_attempts:
                break
            logger.warning(
                "%s; attempt %d/%d, retrying in %.2fs", last_error, attempt + 1, self._max_attempts, delay
            )
            await self._sleep(delay)
        assert last_error is not None  # the loop runs at least once and every failing path sets it
        logger.warning("%s; giving up after %d attempts", last_error, self._max_attempts)
        raise last_error

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads many bots hitting the same outage across the whole window.
        return self._rng.uniform(0, min(self._backoff_max, self._backoff_base * 2**attempt))

    def _report(self, method: str, label: str, status: int | str) -> None:
        if self._on_response is not None:
            self._on_response(method, label, status)

    @staticmethod
    def _decode(raw: bytes, method: str, display: str, status: int, headers: CIMultiDictProxy[str]) -> Any:
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise WebexBadResponse(
                f"response body is not JSON ({exc})",
                method=method,
                path=display,
                status=status,
                tracking_id=headers.get("TrackingID"),
            ) from exc

    @staticmethod
    def _parse(model: type[ModelT], body: Any, method: str, display: str, reply: _Reply) -> ModelT:
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise WebexBadResponse(
                f"response does not fit {model.__name__}: {exc.error_count()} error(s), "
                f"first at {where}: {first['msg']}",
                method=method,
                path=display,
                status=reply.status,
                tracking_id=reply.tracking_id,
            ) from exc


DESTINATIONS = ("roomId", "toPersonId", "toPersonEmail")
# Webex's limit for one uploaded file; only one file goes with a message.
MAX_FILE_BYTES = 100 * 1024 * 1024
FILE_FIELDS = frozenset({*DESTINATIONS, "parentId", "text", "markdown"})


@dataclass(frozen=True, slots=True)
class FileUpload:
    """A file for POST /messages (multipart): Webex shows images such as the stats chart inline."""

    filename: str
    content_type: str
    data: bytes


def check_file_body(body: Mapping[str, Any], file: FileUpload) -> None:
    """What Webex would refuse in an upload, refused here: the message checks, a card, an empty or huge file."""
    check_message_body(body)
    extra = sorted(set(body) - FILE_FIELDS)
    if extra:
        # Form fields are text: a card (attachments) travels as JSON, in a message of its own.
        raise ValueError(f"an upload carries only text fields, not {', '.join(extra)}")
    if not file.data or len(file.data) > MAX_FILE_BYTES:
        raise ValueError(f"a file must have 1 to {MAX_FILE_BYTES} bytes, not {len(file.data)}")


def check_message_body(body: Mapping[str, Any]) -> None:
    """What Webex would refuse with a 400, refused here where the bug is."""
    if sum(bool(body.get(key)) for key in DESTINATIONS) != 1:
        raise ValueError("a message needs exactly one of roomId, toPersonId, toPersonEmail")
    if not body.get("text") and not body.get("markdown"):
        # Webex needs it too, and clients that cannot render cards show only this fallback.
        raise ValueError("a message needs text or markdown")


def _quote(resource_id: str) -> str:
    # safe="" so an id can never add path segments ("../webhooks") to the URL.
    return quote(resource_id, safe="")


def _link_url(link: Any) -> URL | None:
    if link is None:
        return None
    url = link.get("url")
    return url if isinstance(url, URL) else None


def _error_details(raw: bytes, headers: CIMultiDictProxy[str]) -> tuple[str, str | None]:
    """The human message and trackingId of an error reply; either may be missing or not JSON."""
    tracking_id = headers.get("TrackingID")
    message = ""
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = None
        message = raw[:200].decode("utf-8", "replace")
    if isinstance(body, dict):
        if isinstance(body.get("trackingId"), str):
            tracking_id = body["trackingId"]
        if isinstance(body.get("message"), str):
            message = body["message"]
        errors = body.get("errors")
        if not message and isinstance(errors, list) and errors and isinstance(errors[0], dict):
            message = str(errors[0].get("description", ""))
    return message or "no error message", tracking_id


def _error_for_status(status: int) -> type[WebexError]:
    if status in (401, 403):
        return WebexAuthError
    if status == 404:
        return WebexNotFound
    if 400 <= status < 500:
        return WebexBadRequest
    if status >= 500:
        return WebexUnavailable
    return WebexError
