"""Per-person rate limit: a token bucket each; the first event over it gets a note, the rest nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from bot.i18n import N_

MAX_PEOPLE = 10_000  # buckets remembered; past it, full ones (people at rest) are forgotten

NOTE_EVERY = 60.0  # seconds between two "slow down" notes to one person

Verdict = Literal["ok", "note", "drop"]

SLOW_DOWN = N_(
    "You're sending more than I can answer well, so I'm skipping your messages for a minute. "
    "Please wait a moment, then send your question again."
)


@dataclass(slots=True)
class RateLimiter:
    """`per_minute` events per person, in bursts of as many; 0 turns the limit off.

    In memory, per process: with several replicas each one allows this many, which is fine for a limit that
    only has to stop floods."""

    per_minute: int
    clock: Callable[[], float] = time.monotonic
    # person -> [tokens, when last counted, when last told to slow down]
    _buckets: dict[str, list[float]] = field(default_factory=dict)

    def take(self, person: str) -> Verdict:
        if self.per_minute <= 0:
            return "ok"
        now = self.clock()
        bucket = self._buckets.get(person)
        if bucket is None:
            if len(self._buckets) >= MAX_PEOPLE:
                self._forget_full(now)
            bucket = self._buckets[person] = [float(self.per_minute), now, -NOTE_EVERY]
        tokens = min(float(self.per_minute), bucket[0] + (now - bucket[1]) * self.per_minute / 60.0)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return "ok"
        bucket[0] = tokens
        if now - bucket[2] < NOTE_EVERY:  # a flood that goes on is told once a minute, not once a refill
            return "drop"
        bucket[2] = now
        return "note"

    def _forget_full(self, now: float) -> None:
        refill = self.per_minute / 60.0
        self._buckets = {
            person: bucket
            for person, bucket in self._buckets.items()
            if bucket[0] + (now - bucket[1]) * refill < self.per_minute
        }
