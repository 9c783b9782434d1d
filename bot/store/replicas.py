"""The replicas' heartbeats and the knowledge version they share: how a reload reaches every process."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bot.store.base import StoreBase
from bot.store.records import Replica
from bot.store.schema import knowledge_state, read_record, replicas

# A replica not heard of for this long is gone (killed, its host lost): its row is deleted at the next join.
FORGET_AFTER = timedelta(days=1)


class ReplicaStore(StoreBase):
    """The Store's replica queries."""

    async def knowledge_version(self) -> int:
        """The version every replica should have loaded (0 before the first reload)."""
        async with self._begin() as conn:
            found = (await conn.execute(select(knowledge_state.c.version))).scalar_one_or_none()
        return int(found or 0)

    async def report_replica(
        self,
        replica_id: str,
        *,
        version: int,
        fingerprint: str,
        articles: int,
        error: str | None,
        started_at: datetime,
    ) -> int:
        """The heartbeat: what this replica has loaded, now; returns the version it should have."""
        now = self._now()
        values = {
            "replica_id": replica_id,
            "started_at": started_at,
            "last_seen": now,
            "knowledge_version": version,
            "knowledge_fingerprint": fingerprint,
            "articles": articles,
            "knowledge_error": error,
        }
        insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
        upsert = (
            insert(replicas)
            .values(values)
            .on_conflict_do_update(
                index_elements=[replicas.c.replica_id],
                set_={key: value for key, value in values.items() if key != "replica_id"},
            )
        )
        async with self._begin() as conn:
            await conn.execute(upsert)
            shared = (await conn.execute(select(knowledge_state.c.version))).scalar_one_or_none()
        return int(shared or 0)

    async def bump_knowledge_version(self, by: str) -> int:
        """A reload succeeded somewhere: every replica should load the files again. Returns the new version."""
        now = self._now()
        insert: Any = pg_insert if self.dialect == "postgresql" else sqlite_insert
        bump = (
            insert(knowledge_state)
            .values(id=1, version=1, changed_at=now, changed_by=by[:320])
            .on_conflict_do_update(
                index_elements=[knowledge_state.c.id],
                set_={"version": knowledge_state.c.version + 1, "changed_at": now, "changed_by": by[:320]},
            )
            .returning(knowledge_state.c.version)
        )
        async with self._begin() as conn:
            return int((await conn.execute(bump)).scalar_one())

    async def live_replicas(self, seen_within: timedelta) -> list[Replica]:
        """The replicas whose heartbeat is recent enough to count them as running."""
        query = (
            select(replicas)
            .where(replicas.c.last_seen >= self._now() - seen_within)
            .order_by(replicas.c.started_at, replicas.c.replica_id)
        )
        async with self._begin() as conn:
            return [read_record(Replica, row) for row in (await conn.execute(query)).all()]

    async def leave(self, replica_id: str) -> None:
        """A clean stop: this replica no longer counts. Long-silent ones (kill -9) are forgotten too."""
        gone = replicas.c.last_seen < self._now() - FORGET_AFTER
        async with self._begin() as conn:
            await conn.execute(delete(replicas).where((replicas.c.replica_id == replica_id) | gone))
