"""Typed aiohttp app keys, one per shared resource (kept apart from app.py so views can import them)."""

from __future__ import annotations

from aiohttp import ClientSession, web

from bot.context import BotContext
from bot.inbox import InboxWriter
from bot.websocket import WebsocketInbound
from bot.worker import Worker

CONTEXT = web.AppKey("context", BotContext)
WORKER = web.AppKey("worker", Worker)
SESSION = web.AppKey("session", ClientSession)
INBOX = web.AppKey("inbox", InboxWriter)
WEBSOCKET = web.AppKey("websocket", WebsocketInbound)
