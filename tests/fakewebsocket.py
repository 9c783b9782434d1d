"""A fake of Webex's websocket side: discovery (U2C), the device service (WDM) and the socket (mercury), one real
aiohttp server on loopback, fed from a FakeWebex's people, rooms and messages. Faithful to the public SDKs (see
shared/reference/webex-websocket.md): the authorization frame, buffer-state, sequence numbers, pings, acks,
redelivery of what was not acknowledged, close codes, stale devices and the device cap."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import ssl
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import WSMsgType, web

from tests.fakewebex import API_PREFIX, FakeWebex, bare_uuid

Json = dict[str, Any]

CONVERSATION_HOST = "conv-a.wbx2.com"
EXCESSIVE = "User has excessive device registrations"


def _stamp(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SocketWebex(FakeWebex):
    """The fake REST API plus GET /rooms?sortBy=lastactivity, which a catch-up after a gap needs."""

    def _routes(self) -> Iterable[web.RouteDef]:
        return [*super()._routes(), web.get(f"{API_PREFIX}/rooms", self._list_rooms)]

    async def start_tls(self, ssl_context: ssl.SSLContext) -> str:
        """Serve HTTPS, as Webex does (a proxy then sees CONNECT tunnels, as it would in production)."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_routes(self._routes())
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context).start()
        self.base_url = f"https://127.0.0.1:{self._runner.addresses[0][1]}{API_PREFIX}"
        return self.base_url

    def last_activity(self, room_id: str) -> str:
        stamps = [m["created"] for m in self.messages.values() if m["roomId"] == room_id]
        return str(max([self.rooms[room_id]["created"], *stamps]))

    async def _list_rooms(self, request: web.Request) -> web.Response:
        rooms = [{**room, "lastActivity": self.last_activity(room["id"])} for room in self.rooms.values()]
        if request.query.get("sortBy") == "lastactivity":
            rooms.sort(key=lambda r: r["lastActivity"], reverse=True)
        return self._page(request, rooms)


@dataclass
class Delivery:
    """One envelope for one device; it is sent again on every new connection until acknowledged."""

    envelope: Json
    acked: bool = False
    sends: int = 0


@dataclass
class FakeDevice:
    body: Json
    queue: list[Delivery] = field(default_factory=list)
    socket: web.WebSocketResponse | None = None
    connections: int = 0
    sequence: int = 0
    transport: Any = None

    @property
    def id(self) -> str:
        return str(self.body["url"]).rsplit("/", 1)[-1]

    @property
    def name(self) -> str:
        return str(self.body.get("name", ""))


@dataclass
class Connection:
    device_id: str
    first_frame: Json | None = None
    authorized: bool = False
    close_code: int | None = None


class FakeCloud:
    def __init__(
        self,
        webex: FakeWebex,
        *,
        device_cap: int = 100,
        auth_window: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.webex = webex
        self.device_cap = device_cap
        self.auth_window = auth_window
        self.ssl_context = ssl_context
        self.devices: dict[str, FakeDevice] = {}
        self.connections: list[Connection] = []
        self.acks: list[str] = []  # envelope ids acknowledged, in order
        self.pings = 0
        self.answer_pings = True
        self.lose_acks = False  # acks vanish, as if the line dropped before they arrived
        self.skip_next_sequence = False
        # Devices still listed (and refreshable) whose socket URL answers 404: a stale registration.
        self.dead_sockets: set[str] = set()
        self.requests: list[tuple[str, str]] = []
        self.base = ""
        self._runner: web.AppRunner | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1") -> str:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/u2c/api/v1/catalog", self._catalog)
        app.router.add_get("/wdm/api/v1/devices", self._list_devices)
        app.router.add_post("/wdm/api/v1/devices", self._register)
        app.router.add_delete("/wdm/api/v1/devices", self._delete_all)
        app.router.add_put("/wdm/api/v1/devices/{device_id}", self._refresh)
        app.router.add_delete("/wdm/api/v1/devices/{device_id}", self._delete)
        app.router.add_get("/mercury/v1/apps/wx2/registrations/{device_id}/messages", self._socket)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0, ssl_context=self.ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.base = f"{scheme}://{host}:{port}"
        return self.u2c_url

    @property
    def u2c_url(self) -> str:
        return f"{self.base}/u2c/api/v1"

    async def close(self) -> None:
        for device in self.devices.values():
            if device.socket is not None:
                with contextlib.suppress(Exception):
                    await device.socket.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---- what tests do ---------------------------------------------------------------------------

    def post(self, message: Json) -> list[str]:
        """Webex tells the bot's devices about a new message; returns the envelope ids."""
        return self.publish(self.message_activity(message, "post"))

    def card_action(self, action: Json) -> list[str]:
        return self.publish(self.card_activity(action))

    def share(self, message: Json, *, safe: bool) -> list[str]:
        activity = self.message_activity(message, "share")
        state = "safe" if safe else "unchecked"
        activity["object"] = {
            **activity["object"],
            "objectType": "content",
            "contentCategory": "documents",
            "files": {
                "items": [{"objectType": "file", "displayName": "error.png", "malwareQuarantineState": state}]
            },
        }
        return self.publish(activity)

    def files_scanned(self, message: Json) -> list[str]:
        """The update that follows a share once its files are found safe."""
        share = self.message_activity(message, "share")
        update = {
            **share,
            "id": str(uuid.uuid4()),
            "verb": "update",
            "object": {
                "id": share["id"],
                "objectType": "content",
                "contentCategory": "documents",
                "files": {
                    "items": [
                        {"objectType": "file", "displayName": "error.png", "malwareQuarantineState": "safe"}
                    ]
                },
            },
        }
        return self.publish(update)

    def publish(self, activity: Json) -> list[str]:
        """Queue an activity for every device of the bot and send it where a socket is open."""
        ids: list[str] = []
        for device in self.devices.values():
            envelope = {
                "id": str(uuid.uuid4()),
                "data": {"eventType": "conversation.activity", "activity": activity},
                "timestamp": int(datetime.now(UTC).timestamp() * 1000),
                "trackingId": f"FAKE_{uuid.uuid4()}",
            }
            delivery = Delivery(envelope)
            device.queue.append(delivery)
            ids.append(str(envelope["id"]))
            if device.socket is not None and not device.socket.closed:
                asyncio.get_running_loop().create_task(self._send(device, delivery))
        return ids

    async def drop(self) -> None:
        """Cut every open socket without a close frame (the client sees 1006)."""
        for device in self.devices.values():
            if device.socket is not None:
                device.transport.abort()
                device.socket = None

    async def close_sockets(self, code: int, reason: str = "") -> None:
        for device in self.devices.values():
            if device.socket is not None:
                await device.socket.close(code=code, message=reason.encode())
                device.socket = None

    def add_device(
        self, name: str, *, model: str = "helpdesk-bot", age: timedelta = timedelta(0)
    ) -> FakeDevice:
        """A device registered earlier, by us (model helpdesk-bot) or by another program."""
        when = _stamp(datetime.now(UTC) - age)
        device_id = str(uuid.uuid4())
        body = {
            "url": f"{self.base}/wdm/api/v1/devices/{device_id}",
            "webSocketUrl": f"{self._ws_base()}/mercury/v1/apps/wx2/registrations/{device_id}/messages",
            "name": name,
            "deviceName": name,
            "deviceType": "DESKTOP",
            "model": model,
            "localizedModel": model,
            "systemName": model,
            "creationTime": when,
            "modificationTime": when,
        }
        device = FakeDevice(body)
        self.devices[device.id] = device
        return device

    def forget(self, device_id: str) -> None:
        """The service drops a device behind the bot's back (it then answers 404 for it)."""
        self.devices.pop(device_id, None)

    def acked(self, envelope_ids: Iterable[str]) -> bool:
        return all(i in self.acks for i in envelope_ids)

    def ours(self) -> list[FakeDevice]:
        return [d for d in self.devices.values() if d.body.get("model") == "helpdesk-bot"]

    @property
    def open_sockets(self) -> int:
        return sum(1 for d in self.devices.values() if d.socket is not None and not d.socket.closed)

    # ---- activities ------------------------------------------------------------------------------

    def _actor(self, person_id: str) -> Json:
        person = self.webex.people[person_id]
        return {
            "id": bare_uuid(person_id),
            "objectType": "person",
            "displayName": person["displayName"],
            "emailAddress": person["emails"][0],
            "entryUUID": bare_uuid(person_id),
            "type": "ROBOT" if person.get("type") == "bot" else "PERSON",
        }

    def _target(self, room_id: str) -> Json:
        room = self.webex.rooms[room_id]
        conversation = bare_uuid(room_id)
        return {
            "id": conversation,
            "objectType": "conversation",
            "url": f"https://{CONVERSATION_HOST}/conversation/api/v1/conversations/{conversation}",
            "tags": ["ONE_ON_ONE"] if room["type"] == "direct" else ["MESSAGE_NOTIFICATIONS_ON"],
        }

    def message_activity(self, message: Json, verb: str) -> Json:
        obj: Json = {"objectType": "comment", "displayName": "(encrypted)"}
        mentioned = message.get("mentionedPeople") or []
        if mentioned:
            obj["mentions"] = {"items": [{"id": bare_uuid(p), "objectType": "person"} for p in mentioned]}
        activity: Json = {
            "id": bare_uuid(message["id"]),
            "objectType": "activity",
            "verb": verb,
            "published": message["created"],
            "actor": self._actor(message["personId"]),
            "object": obj,
            "target": self._target(message["roomId"]),
        }
        if message.get("parentId"):
            activity["parent"] = {"id": bare_uuid(message["parentId"]), "type": "reply"}
        return activity

    def card_activity(self, action: Json) -> Json:
        return {
            "id": bare_uuid(action["id"]),
            "objectType": "activity",
            "verb": "cardAction",
            "published": action["created"],
            "actor": self._actor(action["personId"]),
            "object": {"objectType": "submit", "inputs": action["inputs"]},
            "target": self._target(action["roomId"]),
            "parent": {"id": bare_uuid(action["messageId"]), "type": "cardAction"},
        }

    # ---- HTTP ------------------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if request.path.endswith("/messages") and "/mercury/" in request.path:
            response: web.StreamResponse = await handler(request)  # the socket authorizes in its first frame
            return response
        if not self._authorized(request):
            return web.json_response({"message": "The request requires a valid access token."}, status=401)
        response = await handler(request)
        return response

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.webex.token)

    def _ws_base(self) -> str:
        return self.base.replace("https://", "wss://").replace("http://", "ws://")

    async def _catalog(self, request: web.Request) -> web.Response:
        if request.query.get("format") != "hostmap":
            return web.json_response({"message": "format=hostmap expected"}, status=400)
        host = self.base.split("://", 1)[1]
        return web.json_response(
            {
                "serviceLinks": {
                    "wdm": f"{self.base}/wdm/api/v1",
                    "conversation": f"https://{CONVERSATION_HOST}/conversation/api/v1",
                    "hydra": self.webex.base_url,
                },
                "hostCatalog": {
                    CONVERSATION_HOST: [
                        {
                            "host": CONVERSATION_HOST,
                            "ttl": -1,
                            "priority": 5,
                            "id": "urn:TEAM:us-east-2_a:conversation",
                        }
                    ],
                    host: [{"host": host, "ttl": -1, "priority": 5, "id": "urn:TEAM:us-east-2_a:wdm"}],
                },
                "format": "hostmap",
            }
        )

    async def _list_devices(self, request: web.Request) -> web.Response:
        return web.json_response({"devices": [d.body for d in self.devices.values()]})

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        if len(self.devices) >= self.device_cap:
            return web.json_response({"message": EXCESSIVE, "trackingId": f"FAKE_{uuid.uuid4()}"}, status=403)
        device = self.add_device(str(body.get("name", "")), model=str(body.get("model", "")))
        device.body.update({k: v for k, v in body.items() if k not in ("url", "webSocketUrl")})
        return web.json_response(device.body)

    async def _refresh(self, request: web.Request) -> web.Response:
        device = self.devices.get(request.match_info["device_id"])
        if device is None:
            return web.json_response({"message": "Device not found"}, status=404)
        device.body["modificationTime"] = _stamp()
        return web.json_response(device.body)

    async def _delete(self, request: web.Request) -> web.Response:
        if self.devices.pop(request.match_info["device_id"], None) is None:
            return web.json_response({"message": "Device not found"}, status=404)
        return web.Response(status=204)

    async def _delete_all(self, request: web.Request) -> web.Response:
        self.devices.clear()
        return web.Response(status=204)

    # ---- the socket ------------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.StreamResponse:
        device = self.devices.get(request.match_info["device_id"])
        if device is None or device.id in self.dead_sockets:
            return web.json_response({"message": "Unknown registration"}, status=404)
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = Connection(device.id)
        self.connections.append(connection)
        try:
            first = await ws.receive(timeout=self.auth_window)
        except TimeoutError:
            connection.close_code = 4401
            await ws.close(code=4401, message=b"authorization not received")
            return ws
        if first.type is not WSMsgType.TEXT:
            return ws
        frame = json.loads(first.data)
        connection.first_frame = frame
        if frame.get("type") != "authorization":
            connection.close_code = 4400
            await ws.close(code=4400, message=b"authorization expected")
            return ws
        token = str(frame.get("data", {}).get("token", "")).removeprefix("Bearer ")
        if not hmac.compare_digest(token, self.webex.token):
            connection.close_code = 4401
            await ws.close(code=4401, message=b"invalid token")
            return ws
        connection.authorized = True
        if device.socket is not None and not device.socket.closed:
            await device.socket.close(code=4000, message=b"replaced")
        # What was not acknowledged comes again; what is published from here on is sent as it comes.
        unacked = [d for d in device.queue if not d.acked]
        device.socket = ws
        device.transport = request.transport
        device.connections += 1
        device.sequence = 0
        await ws.send_json(
            {"id": str(uuid.uuid4()), "data": {"eventType": "mercury.buffer_state", "buffer": {}}}
        )
        for delivery in unacked:
            await self._send(device, delivery)
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            frame = json.loads(msg.data)
            if frame.get("type") == "ping":
                self.pings += 1
                if self.answer_pings:
                    await ws.send_json({"id": frame.get("id"), "type": "pong"})
            elif frame.get("type") == "ack" and not self.lose_acks:
                self.acks.append(str(frame.get("messageId")))
                for delivery in device.queue:
                    if delivery.envelope["id"] == frame.get("messageId"):
                        delivery.acked = True
        connection.close_code = ws.close_code
        if device.socket is ws:
            device.socket = None
        return ws

    async def _send(self, device: FakeDevice, delivery: Delivery) -> None:
        ws = device.socket
        if ws is None or ws.closed:
            return
        device.sequence += 2 if self.skip_next_sequence else 1
        self.skip_next_sequence = False
        delivery.sends += 1
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json({**delivery.envelope, "sequenceNumber": device.sequence})
