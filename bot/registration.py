"""Webhook administration: idempotent registration via webexpythonsdk, and an async watchdog that re-enables."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlsplit

import requests
from pydantic import AnyHttpUrl, SecretStr, ValidationError
from webexpythonsdk import WebexAPI
from webexpythonsdk.exceptions import ApiError, MalformedResponse

from bot.config import Settings
from bot.models import Person, Webhook
from bot.webex import WebexClient, WebexError

logger = logging.getLogger(__name__)

# Keyed by "resource/event"; the name is how we tell our webhooks from another integration's on the same token.
WEBHOOK_NAMES: dict[str, str] = {
    "messages/created": "helpdesk-bot messages",
    "attachmentActions/created": "helpdesk-bot card actions",
}
OUR_WEBHOOK_NAMES: frozenset[str] = frozenset(WEBHOOK_NAMES.values())
WEBHOOK_PATH = "/webhooks/webex"
# The SDK's own default is 60s; an admin at a terminal should hear about a dead network sooner.
REQUEST_TIMEOUT_SECONDS = 30

Action = Literal["created", "updated", "unchanged", "duplicate"]


class RegistrationError(Exception):
    """A one-line, token-free reason that the CLI prints as is."""


@dataclass(frozen=True, slots=True)
class RegistrationChange:
    """One line of what `register_webhooks` did (or, from `plan_registration`, will do).

    `webhook_id` is None only for a planned creation; `reasons` names what differed for an update,
    or why a duplicate was left alone.
    """

    action: Action
    name: str
    resource: str
    event: str
    webhook_id: str | None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WebhookRow:
    id: str
    name: str
    resource: str
    event: str
    target_url: str
    status: str
    filter: str | None
    ours: bool


def target_url_for(public_url: AnyHttpUrl | str) -> str:
    # pydantic renders a bare host as "https://host/", so strip before joining to avoid "//webhooks".
    return str(public_url).rstrip("/") + WEBHOOK_PATH


# ---- the pure part: what should change ------------------------------------------------------------


def plan_registration(
    existing: Sequence[Webhook], *, target_url: str, secret: str
) -> list[RegistrationChange]:
    """Decide per wanted webhook: create, update the first same-named one, or leave it; report extra namesakes."""
    changes: list[RegistrationChange] = []
    for key, name in WEBHOOK_NAMES.items():
        resource, event = key.split("/")
        namesakes = [w for w in existing if w.name == name]
        # PUT cannot change resource, event or filter, so only an exact match can be kept up to date.
        fitting = [w for w in namesakes if (w.resource, w.event, w.filter) == (resource, event, None)]
        if fitting:
            keep = fitting[0]
            reasons = _differences(keep, target_url=target_url, secret=secret)
            action: Action = "updated" if reasons else "unchanged"
            changes.append(RegistrationChange(action, name, resource, event, keep.id, reasons))
        else:
            keep = None
            changes.append(RegistrationChange("created", name, resource, event, None))
        for other in namesakes:
            if other is keep:
                continue
            why = (
                "another webhook with this name"
                if any(other is f for f in fitting)
                else f"same name but {other.resource}/{other.event}"
                + (f" filter {other.filter}" if other.filter else "")
                + f", expected {resource}/{event}"
            )
            changes.append(
                RegistrationChange(
                    "duplicate", name, other.resource, other.event, other.id, (why + "; left untouched",)
                )
            )
    return changes


def _differences(webhook: Webhook, *, target_url: str, secret: str) -> tuple[str, ...]:
    reasons: list[str] = []
    if webhook.target_url != target_url:
        reasons.append(f"targetUrl {webhook.target_url} -> {target_url}")
    # A listing without the secret cannot prove it matches, so it is set again rather than trusted.
    if webhook.secret != secret:
        reasons.append("secret")
    if webhook.status != "active":
        reasons.append(f"status {webhook.status} -> active")
    return tuple(reasons)


def is_ours(webhook: Webhook, names: Iterable[str] = OUR_WEBHOOK_NAMES) -> bool:
    return webhook.name in set(names)


# ---- sync admin operations (webexpythonsdk; never on the event loop) --------------------------------


def register_webhooks(settings: Settings) -> list[RegistrationChange]:
    """Create missing webhooks, bring ours up to date; never touches webhooks with other names."""
    token = _required(settings.webex_access_token, "WEBEX_ACCESS_TOKEN")
    public_url = settings.public_url
    if public_url is None:
        raise RegistrationError("PUBLIC_URL is not set: it is the https address Webex delivers webhooks to")
    secret = _required(settings.webex_webhook_secret, "WEBEX_WEBHOOK_SECRET")
    target_url = target_url_for(public_url)

    api = _api(settings, token)
    done: list[RegistrationChange] = []
    with _translated_errors(settings):
        existing = _list(api)
        for change in plan_registration(existing, target_url=target_url, secret=secret):
            if change.action == "created":
                created = api.webhooks.create(
                    name=change.name,
                    targetUrl=target_url,
                    resource=change.resource,
                    event=change.event,
                    secret=secret,
                )
                change = replace(change, webhook_id=_webhook(created).id)
            elif change.action == "updated":
                assert change.webhook_id is not None  # the planner sets it for every update
                api.webhooks.update(
                    change.webhook_id, name=change.name, targetUrl=target_url, secret=secret, status="active"
                )
            done.append(change)
    for change in done:
        if change.action == "duplicate":
            logger.warning(
                "Webhook %s (%s/%s) shares our name %r; left untouched",
                change.webhook_id,
                change.resource,
                change.event,
                change.name,
            )
    return done


def list_webhooks(settings: Settings) -> list[WebhookRow]:
    """Every webhook this token owns, ours marked."""
    api = _api(settings, _required(settings.webex_access_token, "WEBEX_ACCESS_TOKEN"))
    with _translated_errors(settings):
        webhooks = _list(api)
    return [
        WebhookRow(
            id=w.id,
            name=w.name,
            resource=w.resource,
            event=w.event,
            target_url=w.target_url,
            status=w.status,
            filter=w.filter,
            ours=is_ours(w),
        )
        for w in webhooks
    ]


def delete_webhooks(settings: Settings) -> list[str]:
    """Delete ours (by name) and return their ids; another integration's webhooks stay."""
    api = _api(settings, _required(settings.webex_access_token, "WEBEX_ACCESS_TOKEN"))
    deleted: list[str] = []
    with _translated_errors(settings):
        for webhook in _list(api):
            if is_ours(webhook):
                api.webhooks.delete(webhook.id)
                deleted.append(webhook.id)
    return deleted


def whoami(settings: Settings) -> Person:
    """The identity behind the token: proves the token works and shows which bot it belongs to."""
    api = _api(settings, _required(settings.webex_access_token, "WEBEX_ACCESS_TOKEN"))
    with _translated_errors(settings):
        return Person.model_validate(_json(api.people.me()))


def _required(value: SecretStr | None, variable: str) -> str:
    text = value.get_secret_value() if value is not None else ""
    if not text:
        raise RegistrationError(
            f"{variable} is not set: put it in .env (start from .env.example) or the environment; "
            'see docs/webex.md, "Running it in Webex"'
        )
    return text


def _api(settings: Settings, token: str) -> Any:
    # The SDK joins relative paths with urljoin, which drops the last segment ("v1") without a trailing slash.
    base_url = str(settings.webex_api_url).rstrip("/") + "/"
    return WebexAPI(access_token=token, base_url=base_url, single_request_timeout=REQUEST_TIMEOUT_SECONDS)


def _list(api: Any) -> list[Webhook]:
    # The SDK pages lazily, so this must run inside _translated_errors.
    return [_webhook(item) for item in api.webhooks.list()]


def _webhook(sdk_object: Any) -> Webhook:
    return Webhook.model_validate(_json(sdk_object))


def _json(sdk_object: Any) -> dict[str, Any]:
    data = sdk_object.to_dict()
    if not isinstance(data, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    return data


@contextmanager
def _translated_errors(settings: Settings) -> Iterator[None]:
    """SDK, transport and parsing failures become one-line RegistrationErrors; none carries the token."""
    try:
        yield
    except ApiError as exc:
        method = getattr(exc.request, "method", None) or "?"
        path = urlsplit(str(getattr(exc.request, "url", "") or "")).path or "?"
        detail = " ".join(str(exc.message or exc.description or exc.status or "no error message").split())
        raise RegistrationError(
            f"Webex {method} {path} -> {exc.status_code}: {detail} (trackingId={exc.tracking_id or '-'})"
        ) from exc
    except requests.RequestException as exc:
        raise RegistrationError(
            f"could not reach Webex at {settings.webex_api_url}: {type(exc).__name__}"
        ) from exc
    except (ValidationError, MalformedResponse) as exc:
        raise RegistrationError(f"Webex sent a response we cannot read: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# ---- plain-text output for the CLI --------------------------------------------------------------------


def format_changes(changes: Sequence[RegistrationChange]) -> str:
    if not changes:
        return "nothing to do"
    rows = [
        (
            c.action,
            c.name,
            f"{c.resource}/{c.event}",
            c.webhook_id or "-",
            "; ".join(c.reasons),
        )
        for c in changes
    ]
    return _table(rows)


def format_webhooks(rows: Sequence[WebhookRow]) -> str:
    if not rows:
        return "no webhooks registered for this token"
    table = [("", "NAME", "RESOURCE/EVENT", "STATUS", "TARGET URL", "ID")]
    table += [
        (
            "*" if r.ours else "",
            r.name,
            f"{r.resource}/{r.event}" + (f" [{r.filter}]" if r.filter else ""),
            r.status,
            r.target_url,
            r.id,
        )
        for r in rows
    ]
    return _table(table) + "\n* = managed by this bot"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


# ---- async watchdog while serving ---------------------------------------------------------------------


async def reactivate_inactive(client: WebexClient, names: Iterable[str] = OUR_WEBHOOK_NAMES) -> list[str]:
    """Turn our webhooks Webex disabled back on; returns their ids. A failed PUT is logged and skipped."""
    wanted = set(names)
    reactivated: list[str] = []
    for webhook in await client.list_webhooks():
        if webhook.name not in wanted or webhook.status == "active":
            continue
        try:
            await client.update_webhook(
                webhook.id, name=webhook.name, target_url=webhook.target_url, status="active"
            )
        except WebexError as exc:
            logger.error(
                "Webex has disabled webhook %r (%s) and reactivating it failed: %s",
                webhook.name,
                webhook.id,
                exc,
            )
            continue
        logger.warning(
            "Webex had disabled webhook %r (%s, status was %r) — reactivated. "
            "Deliveries were failing; events sent while it was off are lost.",
            webhook.name,
            webhook.id,
            webhook.status,
        )
        reactivated.append(webhook.id)
    return reactivated


async def watch_webhooks(
    client: WebexClient,
    interval: float = 300.0,
    *,
    stop: asyncio.Event,
    names: Iterable[str] = OUR_WEBHOOK_NAMES,
) -> None:
    """Check at once, then every `interval` seconds until `stop` is set; failures are logged, never raised."""
    wanted = frozenset(names)
    while not stop.is_set():
        try:
            await reactivate_inactive(client, wanted)
        except WebexError as exc:
            logger.warning("Webhook watchdog could not check webhooks: %s", exc)
        except Exception:
            # The watchdog must outlive any bug in one round; the next round may well succeed.
            logger.exception("Webhook watchdog round failed")
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
