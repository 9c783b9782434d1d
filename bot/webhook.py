"""POST /webhooks/webex: verify the signature over the raw bytes, parse, drop what we ignore, persist, ack."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from bot.hydra import dedupe_key
from bot.keys import CONTEXT, INBOX, WORKER
from bot.models import WebhookEnvelope
from bot.store import StoreUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
BODY_TIMEOUT_SECONDS = 10.0  # a slow body holds a connection and a task; Webex sends a webhook in one go
HANDLED = {("messages", "created"), ("attachmentActions", "created")}


def signature_valid(body: bytes, secret: str, header: str | None) -> bool:
    """X-Spark-Signature is the hex HMAC-SHA1 of the raw body; compare in constant time."""
    if not header:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha1).hexdigest().encode()
    # Bytes, not str: compare_digest refuses non-ASCII str, and a header is attacker-controlled.
    return hmac.compare_digest(expected, header.strip().lower().encode("utf-8", "replace"))


def _json(code: int, **payload: object) -> web.Response:
    return web.json_response(payload, status=code)


# The answers every accepted delivery gets, encoded once: the ack path is the bot's hottest code.
_QUEUED = b'{"status": "queued"}'
_DUPLICATE = b'{"status": "duplicate"}'


async def receive_webhook(request: web.Request) -> web.Response:
    started = time.perf_counter()
    try:
        return await _receive(request)
    except Exception:
        # A bug of ours must not lose the message: 503 makes Webex deliver it again later.
        log.exception("webhook handling failed unexpectedly; answering 503 so Webex redelivers")
        return _json(503, error="internal error, retry later")
    finally:
        request.app[CONTEXT].metrics.ack_seconds.observe(time.perf_counter() - started)


async def _receive(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _json(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        async with asyncio.timeout(BODY_TIMEOUT_SECONDS):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _json(413, error=f"body larger than {MAX_BODY_BYTES} bytes")
    except TimeoutError:
        log.info(
            "webhook from %s dropped: its body took longer than %.0fs", request.remote, BODY_TIMEOUT_SECONDS
        )
        return _json(408, error="request body too slow")
    except (ConnectionError, ClientPayloadError, HttpProcessingError) as exc:
        # The client hung up mid-body: nothing to answer, nothing to store; one line, no traceback.
        log.info("webhook from %s dropped: %s", request.remote, type(exc).__name__)
        return _json(400, error="incomplete request body")
    secret = ctx.settings.webex_webhook_secret
    if secret is not None and not signature_valid(
        raw, secret.get_secret_value(), request.headers.get("X-Spark-Signature")
    ):
        log.warning("webhook from %s refused: bad or missing X-Spark-Signature", request.remote)
        return _json(401, error="bad or missing X-Spark-Signature")
    try:
        # One pass in pydantic's parser; it refuses what PostgreSQL's json would (invalid UTF-8, lone surrogates)
        # and thousands of nested brackets, so the text can be stored as it came.
        envelope = WebhookEnvelope.model_validate_json(raw)
        body = raw.decode()
        if _MAYBE_NOT_FINITE.search(raw):
            _reject_non_finite(body)
    except (ValueError, ValidationError) as exc:
        log.warning("webhook refused: not a webhook envelope (%s)", _short(exc))
        return _json(400, error="not a Webex webhook envelope")
    if (envelope.resource, envelope.event) not in HANDLED:
        ctx.metrics.events_ignored.labels("resource").inc()
        return _json(200, status="ignored", reason=f"{envelope.resource}/{envelope.event} is not handled")
    try:
        data = envelope.message_data() if envelope.resource == "messages" else envelope.action_data()
    except (ValueError, ValidationError) as exc:
        log.warning("webhook refused: %s data is malformed (%s)", envelope.resource, _short(exc))
        return _json(400, error=f"malformed {envelope.resource} data")
    me = ctx.me
    if me is not None and data.person_id == me.id:
        ctx.metrics.events_ignored.labels("self").inc()
        return _json(200, status="ignored", reason="the bot's own event")
    email = getattr(data, "person_email", "") or ""
    if email.casefold().endswith("@webex.bot"):
        ctx.metrics.events_ignored.labels("bot").inc()
        return _json(200, status="ignored", reason="another bot")
    if ctx.store.broken is not None:
        # Accepting work the database cannot keep would lose it; Webex redelivers after a 503.
        return _json(503, error="storage cannot be written, retry later")
    try:
        # The same key as the websocket's for the same message: one answer, whichever path brings it.
        new = await request.app[INBOX].enqueue(dedupe_key(data.id), envelope.resource, body, data.person_id)
    except StoreUnavailable as exc:
        # 503 makes Webex redeliver; a 200 here would lose the message.
        log.error("webhook for %s not stored, answering 503: %s", data.id, exc)
        return _json(503, error="storage unavailable, retry later")
    if not new:
        ctx.metrics.count("ignored", "duplicate")
        return web.Response(body=_DUPLICATE, content_type="application/json")
    ctx.metrics.count("received", envelope.resource)
    request.app[WORKER].notify()
    return web.Response(body=_QUEUED, content_type="application/json")


# NaN, Infinity and numbers too big for a float: pydantic takes them, PostgreSQL's json refuses them (and with
# them the whole insert). The quick look runs on every body; the exact one only when it finds something.
# A value position (after ":", "[" or ",") only, so that ids with "5e123" in them stay on the fast path.
_MAYBE_NOT_FINITE = re.compile(rb"[:\[,]\s*-?(?:NaN|Infinity|[0-9.]+[eE][+-]?[0-9]{3})")


def _reject_non_finite(body: str) -> None:
    def constant(name: str) -> float:
        raise ValueError(f"{name} is not JSON")

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"{text[:20]} is out of range")
        return value

    json.loads(body, parse_constant=constant, parse_float=number)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200]
