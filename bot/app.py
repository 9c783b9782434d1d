"""The composition root: create_app(settings) builds everything; cleanup_ctx owns every lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any, cast

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.config import Settings
from bot.context import BotContext, Knowledge
from bot.handlers import handle_event, tell_failure
from bot.inbox import InboxWriter
from bot.keys import CONTEXT, INBOX, LOCAL, WEBSOCKET, WORKER
from bot.knowledge import KnowledgeError, load_knowledge
from bot.local.routes import add_local_routes
from bot.local.transport import LOCAL_HELPDESK_ROOM, LocalWebex
from bot.metrics import Metrics
from bot.outbox import OutboxDeliverer, OutboxOptions
from bot.registration import watch_webhooks
from bot.replicas import ReplicaSync
from bot.startup import StartupError, database_problem, knowledge_problem, token_problem
from bot.store import DatabaseLost, InboxEvent, Store, StoreUnavailable
from bot.webex import WebexAuthError, WebexClient, WebexError, WebexNotFound
from bot.webhook import MAX_BODY_BYTES, receive_webhook
from bot.websocket import SocketOptions, WebsocketInbound
from bot.worker import Worker, WorkerOptions

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 10.0
DATABASE_CHECK_SECONDS = 10.0
WEBHOOK_CHECK_SECONDS = 300.0
# How long the start waits for Webex to answer GET /people/me, so that a refused token stops it at once.
IDENTITY_WAIT_SECONDS = 5.0


def create_app(
    settings: Settings,
    *,
    worker: WorkerOptions = WorkerOptions(),
    outbox: OutboxOptions = OutboxOptions(),
    websocket: SocketOptions = SocketOptions(),
) -> web.Application:
    """Build the bot. Nothing touches the network or the disk until the app starts (cleanup_ctx)."""
    if settings.local_mode and not settings.helpdesk_room_id:
        # The playground's helpdesk tab is this room, so tickets have somewhere to go.
        settings = settings.model_copy(update={"helpdesk_room_id": LOCAL_HELPDESK_ROOM})
    # client_max_size makes aiohttp answer 413 itself for bodies over the limit.
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.cleanup_ctx.append(_context(settings, worker, outbox, websocket))
    if settings.inbound != "websocket":
        # Without a public URL nobody should post here, and without a secret nothing would check who did.
        app.router.add_post("/webhooks/webex", receive_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if settings.local_mode:
        add_local_routes(app)
    return app


def _context(
    settings: Settings,
    worker_options: WorkerOptions,
    outbox_options: OutboxOptions,
    websocket_options: SocketOptions,
) -> Any:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        try:
            kb = load_knowledge(settings.knowledge_dir, settings.link_overrides)
        except KnowledgeError as exc:
            raise StartupError(knowledge_problem(settings.knowledge_dir, exc)) from exc
        try:
            # In local mode a deleted playground database is simply made again; in Webex mode that is an error.
            store = await Store.open(settings.database_url, refuse_lost_file=not settings.local_mode)
        except DatabaseLost:
            raise  # its own message says what happened and how to start afresh
        except Exception as exc:  # whatever the driver raises, the person needs the one reason
            raise StartupError(database_problem(settings.database_url, exc)) from exc
        metrics = Metrics()
        # trust_env: HTTPS_PROXY, HTTP_PROXY and NO_PROXY apply to every outbound call (README).
        session = aiohttp.ClientSession(trust_env=True)
        webex: Any
        if settings.local_mode:
            local = LocalWebex()
            app[LOCAL] = local
            webex = local
        else:
            token = settings.webex_access_token
            assert token is not None  # local_mode is exactly "no token"
            webex = WebexClient(
                session,
                str(settings.webex_api_url),
                token.get_secret_value(),
                timeout=settings.webex_timeout_seconds,
                on_response=metrics.on_webex_response,
            )
        ctx = BotContext(
            settings=settings, knowledge=Knowledge.build(kb), store=store, webex=webex, metrics=metrics
        )
        ctx.replica.interval = settings.replica_check_seconds
        replicas = ReplicaSync(ctx)
        await replicas.start()
        worker = Worker(
            store,
            lambda event: handle_event(event, ctx),
            on_final_failure=lambda event, exc: tell_failure(event, ctx),
            is_permanent=_is_permanent,
            on_failure=lambda event, final: metrics.events_failed.labels(
                event.resource, "yes" if final else "no"
            ).inc(),
            poll_interval=worker_options.poll_interval,
            retry_schedule=worker_options.retry_schedule,
            lease_seconds=worker_options.lease_seconds or settings.worker_lease_seconds,
            concurrency=worker_options.concurrency or settings.worker_concurrency,
        )
        app[CONTEXT], app[WORKER] = ctx, worker
        app[INBOX] = InboxWriter(store)
        worker.start()
        inbound: WebsocketInbound | None = None
        if settings.inbound == "websocket":
            inbound = WebsocketInbound(
                session=session, ctx=ctx, inbox=app[INBOX], worker=worker, options=websocket_options
            )
            app[WEBSOCKET] = inbound
        outbox: OutboxDeliverer | None = None
        if settings.ticket_webhook_url is not None:
            secret = settings.ticket_webhook_secret
            outbox = OutboxDeliverer(
                store,
                session,
                str(settings.ticket_webhook_url),
                secret.get_secret_value() if secret else None,
                outbox_options,
            )
            outbox.start()
        identity = asyncio.create_task(_learn_identity(ctx, worker), name="identity")
        background = [
            identity,
            asyncio.create_task(_watch_database(store, DATABASE_CHECK_SECONDS), name="database-watch"),
        ]
        if settings.retention_days > 0:
            background.append(
                asyncio.create_task(
                    _purge_periodically(
                        store, timedelta(days=settings.retention_days), settings.purge_interval_seconds
                    ),
                    name="purge",
                )
            )
        stop_watching = asyncio.Event()
        if (
            isinstance(webex, WebexClient)
            and settings.public_url is not None
            and settings.inbound == "webhook"
        ):
            # Webex disables a webhook after repeated failures and never re-enables it by itself.
            background.append(
                asyncio.create_task(
                    watch_webhooks(webex, WEBHOOK_CHECK_SECONDS, stop=stop_watching), name="webhooks"
                )
            )
        started = False
        try:
            await _check_token(identity)
            if inbound is not None:
                inbound.start()  # after the token check: a refused token is said once, by the check
            if settings.local_mode:
                log.info(
                    "local mode (no WEBEX_ACCESS_TOKEN): open %s - %d articles, database %s, an in-memory Webex",
                    _address(settings),
                    len(kb.articles),
                    store.dialect,
                )
            else:
                log.info(
                    "%s: %d articles, database %s, Webex API %s, inbound %s, listening on %s",
                    "ready" if ctx.me else "started (not ready until Webex answers GET /people/me)",
                    len(kb.articles),
                    store.dialect,
                    settings.webex_api_url,
                    settings.inbound,
                    _address(settings),
                )
            started = True
            yield
        finally:
            stop_watching.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if inbound is not None:
                await inbound.stop()
            await app[INBOX].close()
            await worker.stop(grace=SHUTDOWN_GRACE_SECONDS)
            if outbox is not None:
                await outbox.stop()
            await replicas.stop()
            await session.close()
            await store.close()
            if started:
                log.info("stopped cleanly")

    return lifetime


def _address(settings: Settings) -> str:
    """The one address to open; on every interface, that is this machine's own name for itself."""
    host = settings.host
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - naming the wildcard, not binding to it
        host = "localhost"
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}/"


async def _check_token(identity: asyncio.Task[None]) -> None:
    """A refused token stops the start (it will not get better); a Webex that is down only delays readiness."""
    await asyncio.wait({identity}, timeout=IDENTITY_WAIT_SECONDS)
    if identity.done() and isinstance(identity.exception(), WebexAuthError):
        raise StartupError(token_problem(cast(WebexAuthError, identity.exception())))
    identity.add_done_callback(_report_refused_token)


def _report_refused_token(identity: asyncio.Task[None]) -> None:
    if identity.cancelled():
        return
    exc = identity.exception()
    if isinstance(exc, WebexAuthError):
        # Refused after the start (say, the token was revoked while Webex was down): the bot cannot work.
        log.critical("%s", token_problem(exc))
    elif exc is not None:
        log.error("learning the bot's identity failed", exc_info=exc)


async def _learn_identity(ctx: BotContext, worker: Worker) -> None:
    """GET /people/me until it answers: events wait safely in the inbox meanwhile, and /readyz says so.

    Raises WebexAuthError: no retry helps a refused token."""
    delay = 1.0
    while True:
        try:
            ctx.me = await ctx.webex.get_me()
        except WebexAuthError:
            raise
        except (WebexError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot learn the bot's identity yet, retrying in %.0fs: %s", delay, exc)
            await asyncio.sleep(delay + random.uniform(0, delay / 2))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 60.0)
            continue
        if not ctx.settings.local_mode:
            log.info("signed in to Webex as %s (%s)", ctx.me.display_name, ctx.me.id)
        worker.ready.set()
        return


async def _watch_database(store: Store, interval: float) -> None:
    """A database that cannot be written stops the bot taking work (webhooks answer 503, so Webex keeps the
    events), loudly, until it can again."""
    while True:
        was = store.broken
        try:
            await store.check_health()
        except StoreUnavailable as exc:
            if was is None:
                log.critical("the database cannot take work; refusing webhooks (503) until it can: %s", exc)
        except Exception:
            log.exception("database health check failed unexpectedly")
        else:
            if was is not None:
                log.warning("the database takes work again; accepting webhooks")
        await asyncio.sleep(interval)


async def _purge_periodically(store: Store, keep: timedelta, interval: float) -> None:
    """Retention: without it the database grows by every event for ever (about 3 KB each on SQLite)."""
    while True:
        try:
            deleted = await store.purge(keep)
        except StoreUnavailable as exc:
            log.warning("purge skipped, the database is unavailable: %s", exc)
        except Exception:
            log.exception("purge failed; trying again in %.0fs", interval)
        else:
            if any(deleted.values()):
                log.info(
                    "purged rows older than %s: %s",
                    keep,
                    ", ".join(f"{table} {n}" for table, n in deleted.items()),
                )
        await asyncio.sleep(interval)


def _is_permanent(exc: BaseException) -> bool:
    # A deleted message or a refused request will not change on retry.
    return isinstance(exc, WebexNotFound) or (
        isinstance(exc, WebexError)
        and exc.status is not None
        and 400 <= exc.status < 500
        and exc.status != 429
    )


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    counts: dict[str, int] | None
    try:
        counts = await ctx.store.inbox_counts()
        await ctx.store.check_health()  # a write, not only a read: a read-only or full disk is not ready
    except StoreUnavailable:
        counts = None
    checks = {
        "knowledge": len(ctx.knowledge.kb.articles) > 0,
        "webex_identity": ctx.me is not None,
        "database": counts is not None,
    }
    if WEBSOCKET in request.app:
        checks["websocket"] = request.app[WEBSOCKET].connected
    body: dict[str, Any] = {"ready": all(checks.values()), "checks": checks}
    if ctx.store.broken:
        body["problem"] = ctx.store.broken
    if counts is not None:
        body["inbox"] = counts
    if ctx.me is not None:
        body["bot"] = {"id": ctx.me.id, "name": ctx.me.display_name}
    return web.json_response(body, status=200 if body["ready"] else 503)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    with contextlib.suppress(StoreUnavailable):
        ctx.metrics.inbox_pending.set((await ctx.store.inbox_counts()).get("pending", 0))
    return web.Response(
        body=generate_latest(ctx.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


__all__ = ["InboxEvent", "create_app"]
