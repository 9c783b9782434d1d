"""Service discovery (U2C catalog) and the bot's websocket devices (WDM): find ours, register, refresh, prune."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from yarl import URL

from bot.hydra import cluster_of
from bot.webex import parse_retry_after

log = logging.getLogger(__name__)

T = TypeVar("T")

# Every device this bot registers carries this model: how `devices delete` and the pruning tell ours from
# the devices that other programs using the same bot token registered.
DEVICE_MODEL = "helpdesk-bot"
# A live replica refreshes its device at least this often, so an older one of ours belongs to no one.
REFRESH_SECONDS = 3600.0
STALE_AFTER = timedelta(hours=6)
EXCESSIVE = "excessive device registrations"
SYSTEM_VERSION = "1"


class DeviceError(Exception):
    """Discovery or the device service failed; `retry_after` is the server's hint, if it gave one."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class DeviceAuthError(DeviceError):
    """401/403: the token is bad or may not use the service; retrying cannot help."""


class DeviceGone(DeviceError):
    """404: the device no longer exists; register a new one."""


class DeviceLimit(DeviceError):
    """403 'excessive device registrations': the token has too many devices."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class Device(_Model):
    url: str = Field(min_length=1)
    web_socket_url: str = Field(default="", alias="webSocketUrl")
    name: str = ""
    device_name: str = Field(default="", alias="deviceName")
    model: str = ""
    device_type: str = Field(default="", alias="deviceType")
    creation_time: datetime | None = Field(default=None, alias="creationTime")
    modification_time: datetime | None = Field(default=None, alias="modificationTime")

    @property
    def ours(self) -> bool:
        return self.model == DEVICE_MODEL

    def stale(self, now: datetime, keep_name: str) -> bool:
        """Ours, not the one this process uses, and not refreshed by anyone for longer than a live one would go."""
        seen = self.modification_time or self.creation_time
        return self.ours and self.name != keep_name and seen is not None and now - seen > STALE_AFTER


@dataclass(frozen=True, slots=True)
class Catalog:
    service_links: Mapping[str, str]
    # host -> REST id cluster, from the catalog entries' ids.
    clusters: Mapping[str, str]

    @property
    def wdm(self) -> str:
        url = self.service_links.get("wdm")
        if not url:
            raise DeviceError("the service catalog has no device service (wdm)")
        return url


def parse_catalog(body: Any) -> Catalog:
    if not isinstance(body, dict) or not isinstance(body.get("serviceLinks"), dict):
        raise DeviceError("the service catalog answer has no serviceLinks")
    links = {str(k): str(v) for k, v in body["serviceLinks"].items() if isinstance(v, str)}
    clusters: dict[str, str] = {}
    hosts = body.get("hostCatalog")
    for host, entries in hosts.items() if isinstance(hosts, dict) else ():
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                clusters.setdefault(str(entry.get("host") or host), cluster_of(entry["id"]))
                clusters.setdefault(str(host), cluster_of(entry["id"]))
    return Catalog(links, clusters)


class _Http:
    def __init__(self, session: aiohttp.ClientSession, token: str, timeout: float) -> None:
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        self._timeout = timeout

    def __repr__(self) -> str:  # the token is in the headers
        return f"{type(self).__name__}()"

    async def request(
        self, method: str, url: str | URL, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> Any:
        what = f"{method} {URL(url).with_query(None)}"
        try:
            async with self._session.request(
                method,
                url,
                json=body,
                params=params,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DeviceError(f"{what}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            if not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError as exc:
                raise DeviceError(f"{what} -> {status}: the answer is not JSON", status=status) from exc
        detail = raw[:300].decode("utf-8", "replace")
        message = f"{what} -> {status}: {' '.join(detail.split()) or 'no message'}"
        if status == 401:
            raise DeviceAuthError(message, status=status)
        if status == 403 and EXCESSIVE in detail.lower():
            raise DeviceLimit(message, status=status)
        if status == 403:
            raise DeviceAuthError(message, status=status)
        if status == 404:
            raise DeviceGone(message, status=status)
        hint = parse_retry_after(retry_after, default=5.0, maximum=120.0) if status == 429 else None
        raise DeviceError(message, status=status, retry_after=hint)


async def discover(
    session: aiohttp.ClientSession, u2c_url: str, token: str, *, timeout_seconds: float = 10.0
) -> Catalog:
    """GET {u2c}/catalog?format=hostmap: where the device service is, and the hosts' clusters."""
    url = URL(u2c_url.rstrip("/") + "/catalog")
    body = await _Http(session, token, timeout_seconds).request("GET", url, params={"format": "hostmap"})
    return parse_catalog(body)


class Devices:
    """The token's devices at the device service (WDM)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        wdm_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._http = _Http(session, token, timeout)
        self._base = wdm_url.rstrip("/")
        self._now = now

    async def all(self) -> list[Device]:
        body = await self._http.request("GET", f"{self._base}/devices")
        items = body.get("devices") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise DeviceError("the device list has no 'devices' array")
        devices = []
        for item in items:
            try:
                devices.append(Device.model_validate(item))
            except ValidationError:
                continue  # another program's odd device is none of our business
        return devices

    async def register(self, name: str) -> Device:
        body = {
            "deviceName": name,
            "deviceType": "DESKTOP",
            "localizedModel": DEVICE_MODEL,
            "model": DEVICE_MODEL,
            "name": name,
            "systemName": DEVICE_MODEL,
            "systemVersion": SYSTEM_VERSION,
        }
        return self._device(await self._http.request("POST", f"{self._base}/devices", body=body))

    async def refresh(self, device: Device) -> Device:
        """PUT the device: keeps it alive, and tells whether it still exists (DeviceGone)."""
        body = {
            "deviceName": device.device_name or device.name,
            "deviceType": device.device_type or "DESKTOP",
            "localizedModel": DEVICE_MODEL,
            "model": DEVICE_MODEL,
            "name": device.name,
            "systemName": DEVICE_MODEL,
            "systemVersion": SYSTEM_VERSION,
        }
        return self._device(await self._http.request("PUT", device.url, body=body))

    async def delete(self, device: Device) -> None:
        with contextlib.suppress(DeviceGone):  # already gone is what we wanted
            await self._http.request("DELETE", device.url)

    async def ensure(self, name: str) -> Device:
        """Our device by its name, refreshed; else a new one. At the device cap, our stale ones make room once."""
        for device in await self.all():
            if device.ours and device.name == name:
                try:
                    return await self.refresh(device)
                except DeviceGone:
                    break
        try:
            return await self.register(name)
        except DeviceLimit:
            pruned = await self.prune_stale(keep_name=name)
            log.warning(
                "Webex refused a new device (too many registrations); deleted %d stale device(s) of ours "
                "and trying once more",
                len(pruned),
            )
        try:
            return await self.register(name)
        except DeviceLimit as exc:
            raise DeviceLimit(
                f"{exc}; none of our devices is stale: see `python -m bot devices list`",
                status=exc.status,
            ) from exc

    async def prune_stale(self, *, keep_name: str) -> list[Device]:
        now = self._now()
        stale = [d for d in await self.all() if d.stale(now, keep_name)]
        for device in stale:
            await self.delete(device)
        return stale

    @staticmethod
    def _device(body: Any) -> Device:
        try:
            device = Device.model_validate(body)
        except ValidationError as exc:
            raise DeviceError(f"the device answer does not fit: {str(exc).splitlines()[0]}") from exc
        if not device.web_socket_url:
            raise DeviceError("the device has no webSocketUrl")
        return device


# ---- the CLI: python -m bot devices list|delete ----------------------------------------------------------


async def _with_devices(u2c_url: str, token: str, use: Callable[[Devices], Awaitable[T]]) -> T:
    # trust_env like the server's session: the admin's shell usually sits behind the same proxy.
    async with aiohttp.ClientSession(trust_env=True) as session:
        catalog = await discover(session, u2c_url, token)
        return await use(Devices(session, catalog.wdm, token))


def list_devices(u2c_url: str, token: str) -> list[Device]:
    """Every device of the token (ours are the ones with `ours`)."""
    return asyncio.run(_with_devices(u2c_url, token, lambda devices: devices.all()))


def delete_devices(u2c_url: str, token: str, *, stale_only: bool, keep_name: str = "") -> list[Device]:
    """Delete our devices (only the stale ones with stale_only); never another program's."""

    async def delete(devices: Devices) -> list[Device]:
        if stale_only:
            return await devices.prune_stale(keep_name=keep_name)
        ours = [d for d in await devices.all() if d.ours]
        for device in ours:
            await devices.delete(device)
        return ours

    return asyncio.run(_with_devices(u2c_url, token, delete))


def format_devices(devices: Iterable[Device], now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = []
    for d in devices:
        seen = d.modification_time or d.creation_time
        age = f"{(now - seen).total_seconds() / 3600:.1f} h ago" if seen else "-"
        mark = ("ours, stale" if d.stale(now, keep_name="") else "ours") if d.ours else "other program"
        rows.append(f"{d.name or '(no name)':<40} {mark:<14} refreshed {age:<12} {d.url}")
    return "\n".join(rows) if rows else "no devices"
