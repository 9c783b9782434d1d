"""Every typed aiohttp app key, one per shared resource (apart from app.py, so views and local mode can import them)."""

from __future__ import annotations

from aiohttp import web

from bot.context import BotContext
from bot.inbox import InboxWriter
from bot.local.renderer import Renderer
from bot.local.transport import LocalWebex
from bot.websocket import WebsocketInbound
from bot.worker import Worker

CONTEXT = web.AppKey("context", BotContext)
WORKER = web.AppKey("worker", Worker)
INBOX = web.AppKey("inbox", InboxWriter)
LOCAL = web.AppKey("local", LocalWebex)  # local mode only
RENDERER = web.AppKey("renderer", Renderer)  # local mode only
WEBSOCKET = web.AppKey("websocket", WebsocketInbound)
