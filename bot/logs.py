"""Logging set-up: repeated lines rate-limited, and no library's DEBUG output (SQL parameters, message text)."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

REPEAT_WINDOW = 10.0  # seconds
REPEAT_BURST = 5  # lines of one kind per window; the rest are counted and summed up in the next line
# Their DEBUG and INFO output carries SQL, its parameters or request bodies: WARNING and up, whatever LOG_LEVEL.
QUIET_LIBRARIES = ("aiosqlite", "sqlalchemy", "asyncpg", "aiohttp", "asyncio", "urllib3", "webexpythonsdk")


class RepeatFilter(logging.Filter):
    """Lets through REPEAT_BURST lines of one kind (logger, level, format string) per REPEAT_WINDOW: a flood of
    bad requests costs a few lines, not 24 MB of log. The first line after a window says how many were held."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window start, shown, held]

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is None or now - seen[0] >= REPEAT_WINDOW:
            held = int(seen[2]) if seen else 0
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[kind] = [now, 1.0, 0.0]
            if held:
                record.msg = (
                    f"{record.msg} [{held} similar line(s) held back in the last {REPEAT_WINDOW:.0f}s]"
                )
            return True
        if seen[1] < REPEAT_BURST:
            seen[1] += 1
            return True
        seen[2] += 1
        return False


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    logging.basicConfig(level=level, handlers=[handler])
    if logging.getLevelName(level) < logging.INFO:
        for name in QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
