"""Which workers are alive: a lock each live worker holds for its lifetime, released by the OS when it dies."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)

# The first half of every worker's PostgreSQL advisory lock key ("LIVE"); the migration lock uses the one-key form.
PG_LOCK_NAMESPACE = 0x4C495645


class Liveness(Protocol):
    """A lease's holder is known dead when its lock is free; anything else (no lock seen) waits for the lease."""

    async def hold(self) -> bool:
        """Take, or check and retake, this worker's own lock; False while that is impossible."""
        ...

    async def dead(self, holders: Iterable[str]) -> set[str]:
        """The holders among `holders` whose process is gone."""
        ...

    async def close(self) -> None: ...

    @property
    def definitive(self) -> bool:
        """True where a free lock can only mean a dead process (a lost connection could also free it)."""
        ...


def _digest(worker_id: str) -> bytes:
    return hashlib.sha256(worker_id.encode()).digest()


class FileLiveness:
    """SQLite lives on one machine, so its workers do too: each holds flock() on a file of its own next to the
    database. The kernel lets go of it when the process dies, kill -9 included, and never while it lives."""

    def __init__(self, database_path: str, worker_id: str) -> None:
        self._dir = Path(database_path).with_name(Path(database_path).name + ".bot")
        self._worker_id = worker_id
        self._file: IO[bytes] | None = None

    @property
    def definitive(self) -> bool:
        return True

    def _path(self, worker_id: str) -> Path:
        return self._dir / f"{_digest(worker_id).hex()[:32]}.lock"

    async def hold(self) -> bool:
        if self._file is not None:
            return True
        try:
            self._dir.mkdir(exist_ok=True)  # shared with the store's "created" marker
            file = self._path(self._worker_id).open("ab")
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            log.warning(
                "no worker lock in %s (%s): after a crash, events wait for their lease", self._dir, exc
            )
            return False
        self._file = file
        return True

    async def dead(self, holders: Iterable[str]) -> set[str]:
        return {holder for holder in holders if holder != self._worker_id and self._is_dead(holder)}

    def _is_dead(self, holder: str) -> bool:
        path = self._path(holder)
        try:
            file = path.open("rb")
        except OSError:
            return False  # no lock file: a worker we cannot judge (another version, another host); its lease decides
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            except OSError:
                return False
            with contextlib.suppress(OSError):
                path.unlink()
            return True

    async def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                self._path(self._worker_id).unlink()
            file.close()


class PgLiveness:
    """Each worker holds a session advisory lock on a connection of its own. PostgreSQL frees it as soon as that
    connection ends: at once when the process dies, within the server's TCP keepalive when its machine does."""

    def __init__(self, engine: AsyncEngine, worker_id: str) -> None:
        self._engine = engine
        self._worker_id = worker_id
        self._key = self.key(worker_id)
        self._conn: AsyncConnection | None = None

    @property
    def definitive(self) -> bool:
        return False  # a dropped connection frees the lock of a live worker too, until it takes it again

    @staticmethod
    def key(worker_id: str) -> int:
        return int.from_bytes(_digest(worker_id)[:4], "big") & 0x7FFFFFFF

    async def hold(self) -> bool:
        try:
            if self._conn is not None:
                try:
                    await self._conn.execute(text("SELECT 1"))
                    await self._conn.commit()
                    return True
                except Exception:
                    await self._drop()
            conn = await self._engine.connect()
            try:
                taken = (
                    await conn.execute(
                        text("SELECT pg_try_advisory_lock(:ns, :key)"),
                        {"ns": PG_LOCK_NAMESPACE, "key": self._key},
                    )
                ).scalar_one()
                await conn.commit()
            except BaseException:
                await conn.invalidate()
                raise
            if not taken:  # another live worker's id hashes to the same key: both fall back to their leases
                await conn.close()
                log.warning(
                    "this worker's liveness lock is taken; after a crash its events wait for the lease"
                )
                return False
            self._conn = conn
            return True
        except Exception as exc:
            log.warning("cannot hold this worker's liveness lock yet: %s", type(exc).__name__)
            return False

    async def dead(self, holders: Iterable[str]) -> set[str]:
        others = {holder: self.key(holder) for holder in holders if holder != self._worker_id}
        if not others:
            return set()
        query = text(
            "SELECT objid::bigint AS key FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid = :ns AND objsubid = 2"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        async with self._engine.connect() as conn:
            live = {row.key for row in await conn.execute(query, {"ns": PG_LOCK_NAMESPACE})}
        return {holder for holder, key in others.items() if key not in live}

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Invalidated, not returned to the pool: a pooled connection would keep the lock, and the worker
            # would look alive to the others for as long as this process runs.
            with contextlib.suppress(Exception):
                await asyncio.shield(conn.invalidate())

    async def close(self) -> None:
        await self._drop()


def open_liveness(engine: AsyncEngine, worker_id: str) -> Liveness:
    if engine.dialect.name == "sqlite":
        return FileLiveness(engine.url.database or "", worker_id)
    return PgLiveness(engine, worker_id)
