"""Prometheus metrics, one registry per app so that tests can run many apps in one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(slots=True)
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    events_received: Counter = field(init=False)
    events_ignored: Counter = field(init=False)
    events_failed: Counter = field(init=False)
    replies_sent: Counter = field(init=False)
    webex_calls: Counter = field(init=False)
    triage_outcomes: Counter = field(init=False)
    ack_seconds: Histogram = field(init=False)
    inbox_pending: Gauge = field(init=False)
    # Label children of the ack path's counters, looked up once: labels() takes a lock and builds a key.
    _children: dict[tuple[str, str], Any] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        r = self.registry
        self.events_received = Counter(
            "bot_events_received", "Webhook events accepted", ["resource"], registry=r
        )
        self.events_ignored = Counter("bot_events_ignored", "Webhook events ignored", ["reason"], registry=r)
        self.events_failed = Counter(
            "bot_events_failed", "Event handling failures", ["resource", "final"], registry=r
        )
        self.replies_sent = Counter("bot_replies_sent", "Messages the bot posted", ["kind"], registry=r)
        self.webex_calls = Counter(
            "bot_webex_api_calls", "Webex API calls by outcome", ["method", "endpoint", "status"], registry=r
        )
        self.triage_outcomes = Counter("bot_triage_outcomes", "Triage outcomes", ["outcome"], registry=r)
        self.ack_seconds = Histogram(
            "bot_webhook_ack_seconds",
            "Time from request to webhook acknowledgement",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.inbox_pending = Gauge("bot_inbox_pending", "Events waiting in the inbox", registry=r)

    def count(self, counter: Literal["received", "ignored"], label: str) -> None:
        """events_received / events_ignored by a label from a small fixed set (the webhook's hot path)."""
        child = self._children.get((counter, label))
        if child is None:
            metric = self.events_received if counter == "received" else self.events_ignored
            child = self._children[(counter, label)] = metric.labels(label)
        child.inc()

    def on_webex_response(self, method: str, endpoint: str, status: int | str) -> None:
        self.webex_calls.labels(method, endpoint, str(status)).inc()
