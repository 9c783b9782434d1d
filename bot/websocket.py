"""Inbound over the Webex websocket: discover, keep a device, hold the socket, persist each event, then ack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from prometheus_client import Counter, Gauge
from yarl import URL

from bot.catchup import catch_up
from bot.context import BotContext
from bot.devices import REFRESH_SECONDS, Device, DeviceAuthError, DeviceError, DeviceGone, Devices, discover
from bot.inbox import InboxWriter
from bot.mercury import Frame, InboxItem, Translator, bare_uuid
from bot.store import StoreUnavailable
from bot.webex import WebexClient
from bot.worker import Worker

log = logging.getLogger(__name__)

PING_SECONDS = 15.0
PONG_TIMEOUT_SECONDS = 14.0
BACKOFF_MIN_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 32.0
CONNECT_TIMEOUT_SECONDS = 15.0
MAX_IN_FLIGHT = 256  # frames being stored at once; the read loop waits beyond that
# Catch-up reaches back this much before the last moment the socket was known to be alive.
CATCH_UP_MARGIN = timedelta(minutes=2)
# What the JS SDK asks for: text frames, the buffer-state frame that says the socket is open.
SOCKET_QUERY = {"outboundWireFormat": "text", "bufferStates": "true", "aliasHttpStatus": "true"}

REPLACED, BAD_REQUEST, UNAUTHORIZED, FORBIDDEN = 4000, 4400, 4401, 4403


class Stop(Exception):
    """The socket must not be reconnected (bad token, forbidden, replaced); the message says why."""

    def __init__(self, message: str, level: int = logging.CRITICAL) -> None:
        super().__init__(message)
        self.level = level


@dataclass(slots=True)
class _Closed:
    code: int | None
    reason: str
    opened: bool


@dataclass(frozen=True, slots=True)
class SocketOptions:
    """How the socket paces itself (tests shorten the waits)."""

    ping_seconds: float = PING_SECONDS
    pong_timeout: float = PONG_TIMEOUT_SECONDS
    backoff_min: float = BACKOFF_MIN_SECONDS
    backoff_max: float = BACKOFF_MAX_SECONDS
    refresh_seconds: float = REFRESH_SECONDS


class SocketMetrics:
    def __init__(self, registry: Any, last_event_age: Callable[[], float]) -> None:
        self.connects = Counter("bot_websocket_connects", "Websocket connections opened", registry=registry)
        self.reconnects = Counter(
            "bot_websocket_reconnects",
            "Websocket reconnects, by why the last one ended",
            ["reason"],
            registry=registry,
        )
        self.connected = Gauge("bot_websocket_connected", "1 while the websocket is open", registry=registry)
        self.caught_up = Counter(
            "bot_websocket_caught_up", "Missed messages found by catch-up and queued", registry=registry
        )
        age = Gauge(
            "bot_websocket_last_event_age_seconds",
            "Seconds since the websocket brought the last event (NaN before the first)",
            registry=registry,
        )
        age.set_function(last_event_age)


def proxy_for(url: URL) -> tuple[URL | None, aiohttp.BasicAuth | None]:
    """HTTPS_PROXY for wss:// (HTTP_PROXY for ws://), unless NO_PROXY exempts the host: aiohttp's trust_env
    only looks for WSS_PROXY, which nobody sets."""
    scheme = {"wss": "https", "ws": "http"}.get(url.scheme, url.scheme)
    try:
        return get_env_proxy_for_url(url.with_scheme(scheme))
    except LookupError:
        return None, None


class WebsocketInbound:
    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        ctx: BotContext,
        inbox: InboxWriter,
        worker: Worker,
        options: SocketOptions = SocketOptions(),
    ) -> None:
        settings = ctx.settings
        token = settings.webex_access_token
        assert token is not None  # the websocket path only runs with a token
        self._token = token.get_secret_value()
        self._session = session
        self._ctx = ctx
        self._inbox = inbox
        self._worker = worker
        self._u2c = str(settings.webex_u2c_url)
        self.device_name = settings.webex_device_name or f"helpdesk-bot@{socket.gethostname()}"
        self._catch_up_window = timedelta(hours=settings.webex_catch_up_hours)
        self._ping_seconds = options.ping_seconds
        self._pong_timeout = options.pong_timeout
        self._backoff_min = options.backoff_min
        self._backoff_max = options.backoff_max
        self._refresh_seconds = options.refresh_seconds
        self._translator = Translator()
        self._rng = random.Random()  # noqa: S311 - jitter only
        self.connected = False
        self.stopped: str | None = None  # why the socket was given up, for the log and /readyz
        self._last_event: float | None = None
        self._alive_at: datetime | None = None  # wall clock: catch-up asks Webex from here on
        self._pongs: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed_by_us: str | None = None  # why we closed the socket ourselves, for the metrics
        self._run_task: asyncio.Task[None] | None = None
        self._catch_up_task: asyncio.Task[None] | None = None
        self._catch_up_since: datetime | None = None
        self.metrics = SocketMetrics(ctx.metrics.registry, self._last_event_age)

    def __repr__(self) -> str:
        return f"WebsocketInbound(device={self.device_name!r}, connected={self.connected})"

    def start(self) -> None:
        self._run_task = asyncio.create_task(self._run(), name="websocket")

    async def stop(self) -> None:
        for task in (self._run_task, self._catch_up_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._tasks:
            # Frames being stored finish (their ack may not go out: the event comes again and is a duplicate).
            await asyncio.wait(self._tasks, timeout=5.0)
        self._set_connected(False)

    # ---- the connection loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        device: Device | None = None
        devices: Devices | None = None
        stale: Device | None = None  # its socket URL answered 404, even if the device list still shows it
        while True:
            try:
                if devices is None:
                    catalog = await discover(self._session, self._u2c, self._token)
                    self._translator.clusters = catalog.clusters
                    devices = Devices(self._session, catalog.wdm, self._token)
                if stale is not None:
                    with contextlib.suppress(DeviceGone):
                        await devices.delete(stale)
                    stale = None
                if device is None:
                    device = await devices.ensure(self.device_name)
                    log.info("websocket device %r ready (%s)", self.device_name, device.url)
                closed = await self._connect(device, devices)
            except Stop as exc:
                return self._give_up(str(exc), level=exc.level)
            except DeviceAuthError as exc:
                return self._give_up(
                    f"WEBEX_ACCESS_TOKEN was refused by Webex ({exc}); fix the token and restart"
                )
            except DeviceGone:
                log.warning("websocket device %r is gone; registering a new one", self.device_name)
                device, reason = None, "device-gone"
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (401, 403):
                    return self._give_up(
                        f"the websocket refused the token ({exc.status}); fix it and restart"
                    )
                if exc.status == 404:
                    log.warning(
                        "websocket handshake 404: device %r is stale; registering again", self.device_name
                    )
                    device, stale = None, device
                reason = f"handshake-{exc.status}"
            except (DeviceError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("websocket unavailable: %s: %s", type(exc).__name__, exc)
                if isinstance(exc, DeviceError) and exc.retry_after:
                    await asyncio.sleep(exc.retry_after)
                reason = "unavailable"
            else:
                if closed.opened:
                    attempt = 0
                reason = self._closed_by_us or _close_reason(closed.code)
                log.warning(
                    "websocket closed (code %s%s); reconnecting",
                    closed.code,
                    f": {closed.reason}" if closed.reason else "",
                )
            self._set_connected(False)
            self.metrics.reconnects.labels(reason).inc()
            delay = self._backoff(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _give_up(self, why: str, level: int = logging.CRITICAL) -> None:
        self.stopped = why
        self._set_connected(False)
        log.log(level, "websocket stopped: %s", why)

    def _backoff(self, attempt: int) -> float:
        base: float = min(self._backoff_max, self._backoff_min * 2.0 ** min(attempt, 30))
        # Jitter: replicas dropped by one outage come back spread out, not all in the same second.
        return min(self._backoff_max, base + self._rng.uniform(0, base / 2))

    async def _connect(self, device: Device, devices: Devices) -> _Closed:
        url = URL(device.web_socket_url).update_query(SOCKET_QUERY)
        proxy, proxy_auth = await asyncio.to_thread(proxy_for, url)  # it may read ~/.netrc
        log.info("websocket connecting to %s%s", url.with_query(None), f" through {proxy}" if proxy else "")
        ws = await asyncio.wait_for(
            self._session.ws_connect(
                url,
                proxy=proxy,
                proxy_auth=proxy_auth,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                max_msg_size=8 * 1024 * 1024,
            ),
            CONNECT_TIMEOUT_SECONDS,
        )
        self._ws = ws
        self._closed_by_us = None
        opened = False
        keepalive = asyncio.create_task(self._keepalive(ws, device, devices), name="websocket-ping")
        try:
            self._translator.new_connection()
            await ws.send_json(
                {"id": str(uuid.uuid4()), "type": "authorization", "data": {"token": f"Bearer {self._token}"}}
            )
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    opened = await self._on_text(ws, msg.data) or opened
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    opened = await self._on_text(ws, msg.data.decode("utf-8", "replace")) or opened
                elif msg.type is aiohttp.WSMsgType.CLOSE:
                    code, reason = msg.data, str(msg.extra or "")
                    self._check_close(code, reason)
                    return _Closed(code, reason, opened)
                else:  # CLOSING, CLOSED, ERROR: the line went away
                    return _Closed(ws.close_code or 1006, str(ws.exception() or ""), opened)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive
            self._ws = None
            with contextlib.suppress(Exception):
                await ws.close()

    def _check_close(self, code: int, reason: str) -> None:
        if code == REPLACED:
            raise Stop(
                f"another connection replaced ours on device {self.device_name!r} ({reason or code}); "
                "not reconnecting: give each replica its own WEBEX_DEVICE_NAME",
                level=logging.ERROR,
            )
        if code in (UNAUTHORIZED, FORBIDDEN):
            raise Stop(
                f"the websocket refused the token (close {code}: {reason}); fix WEBEX_ACCESS_TOKEN and restart"
            )
        if code == BAD_REQUEST:
            log.error("the websocket said our request was bad (close 4400: %s)", reason)

    async def _keepalive(self, ws: aiohttp.ClientWebSocketResponse, device: Device, devices: Devices) -> None:
        """Application pings as the JS SDK sends them; no pong in time means a dead line, so reconnect."""
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(self._ping_seconds)
            ping_id = str(uuid.uuid4())
            pong = self._pongs[ping_id] = asyncio.Event()
            try:
                await ws.send_json({"id": ping_id, "type": "ping"})
                await asyncio.wait_for(pong.wait(), self._pong_timeout)
            except TimeoutError:
                log.warning("websocket: no pong within %.1fs; reconnecting", self._pong_timeout)
                self._closed_by_us = "pong-timeout"
                await ws.close(code=1000, message=b"pong not received")
                return
            except (ConnectionError, RuntimeError):
                return
            finally:
                self._pongs.pop(ping_id, None)
            if time.monotonic() - refreshed > self._refresh_seconds:
                refreshed = time.monotonic()
                try:
                    await devices.refresh(device)
                except DeviceGone:
                    log.warning(
                        "websocket device %r was deleted; reconnecting with a new one", self.device_name
                    )
                    self._closed_by_us = "device-gone"
                    await ws.close(code=1000, message=b"device gone")
                    return
                except DeviceError as exc:
                    log.warning("could not refresh the websocket device: %s", exc)

    # ---- frames ----------------------------------------------------------------------------------

    async def _on_text(self, ws: aiohttp.ClientWebSocketResponse, text: str) -> bool:
        """Handle one frame; True once the socket is open."""
        if self._translator.me_uuid is None and self._ctx.me is not None:
            self._translator.me_uuid = bare_uuid(self._ctx.me.id)
        frame = self._translator.on_frame(text)
        if frame.kind == "pong":
            waiter = self._pongs.get(frame.pong_id or "")
            if waiter is not None:
                waiter.set()
            self._alive_at = datetime.now(UTC)
            return self.connected
        if frame.gap:
            log.warning("websocket sequence numbers skipped; catching up on what may be missing")
            self._schedule_catch_up(self._alive_at or datetime.now(UTC))
        if not self.connected and frame.kind in ("open", "event", "held", "ignored"):
            self._opened()
        self._alive_at = datetime.now(UTC)
        if frame.kind in ("ignored", "malformed") and frame.reason:
            self._ctx.metrics.count("ignored", _label(frame.reason))
        if frame.events:
            self._last_event = time.monotonic()
            await self._slots.acquire()
            task = asyncio.create_task(self._store_then_ack(ws, frame), name="websocket-store")
            self._tasks.add(task)
            task.add_done_callback(self._stored)
        elif frame.acks:
            await self._ack(ws, frame.acks)
        return self.connected

    def _opened(self) -> None:
        since = self._alive_at
        self._set_connected(True)
        self.metrics.connects.inc()
        log.info("websocket open (device %r)", self.device_name)
        window_start = datetime.now(UTC) - self._catch_up_window
        # A first start reaches back the whole window; a reconnect to just before the line went quiet.
        start = window_start if since is None else max(window_start, since - CATCH_UP_MARGIN)
        if self._catch_up_window > timedelta(0):
            self._schedule_catch_up(start)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _store_then_ack(self, ws: aiohttp.ClientWebSocketResponse, frame: Frame) -> None:
        try:
            for item in frame.events:
                await self.enqueue(item)
        except StoreUnavailable as exc:
            # Not acknowledged, so Webex sends it again on the next connection: reconnect to get it back.
            log.error("websocket event not stored, not acknowledged; reconnecting: %s", exc)
            self._closed_by_us = "storage-unavailable"
            with contextlib.suppress(Exception):
                await ws.close(code=1000, message=b"storage unavailable")
            return
        except Exception:
            log.exception("websocket event could not be handled; it is not acknowledged")
            return
        await self._ack(ws, frame.acks)

    async def enqueue(self, item: InboxItem) -> bool:
        new = await self._inbox.enqueue(item.event_id, item.resource, item.payload)
        if new:
            self._ctx.metrics.count("received", item.resource)
            self._worker.notify()
        else:
            self._ctx.metrics.count("ignored", "duplicate")
        return new

    async def _ack(self, ws: aiohttp.ClientWebSocketResponse, acks: tuple[str, ...]) -> None:
        for message_id in acks:
            try:
                await ws.send_str(json.dumps({"type": "ack", "messageId": message_id}))
            except (ConnectionError, RuntimeError):
                return  # the line is gone: Webex sends it again, and the inbox knows it

    # ---- state -----------------------------------------------------------------------------------

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.metrics.connected.set(1 if connected else 0)

    def _last_event_age(self) -> float:
        return float("nan") if self._last_event is None else time.monotonic() - self._last_event

    def _schedule_catch_up(self, since: datetime) -> None:
        self._catch_up_since = since if self._catch_up_since is None else min(since, self._catch_up_since)
        if self._catch_up_task is None or self._catch_up_task.done():
            self._catch_up_task = asyncio.create_task(self._catch_up(), name="websocket-catch-up")

    async def _catch_up(self) -> None:
        webex = self._ctx.webex
        if not isinstance(webex, WebexClient):
            return
        await self._worker.ready.wait()  # the bot's own id tells its messages from the people's
        while self._catch_up_since is not None:
            since, self._catch_up_since = self._catch_up_since, None
            try:
                found = await catch_up(webex, self._ctx.identity, since, self.enqueue)
            except Exception:
                log.exception("websocket catch-up since %s failed; the next reconnect tries again", since)
                continue
            if found:
                self.metrics.caught_up.inc(found)
                log.info("websocket catch-up: %d missed message(s) since %s queued", found, since)


def _close_reason(code: int | None) -> str:
    return {
        1000: "closed",
        1001: "going-away",
        1006: "dropped",
        1011: "server-error",
        4400: "bad-request",
    }.get(code or 1006, "other")


def _label(reason: str) -> str:
    # Metric labels from a small set: verbs and fixed reasons, cut short.
    return reason.replace(" ", "-")[:32]
