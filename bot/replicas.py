"""Knowledge reloads on every replica: a version in the database that each replica's heartbeat checks."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from bot import cards
from bot.cards import OutgoingMessage
from bot.context import BotContext, Knowledge
from bot.knowledge import KnowledgeBase, KnowledgeError, diff_knowledge, load_knowledge
from bot.store import Replica, StoreUnavailable

log = logging.getLogger(__name__)

MAX_ERROR_CHARS = 500


def knowledge_fingerprint(kb: KnowledgeBase) -> str:
    """Of every article and link: two replicas with the same files have the same fingerprint."""
    digest = hashlib.sha256()
    for article_id in sorted(kb.articles):
        digest.update(f"{article_id}={kb.articles[article_id].fingerprint};".encode())
    for link_id in sorted(kb.links):
        digest.update(f"{link_id}={kb.links[link_id].url};".encode())
    return digest.hexdigest()[:16]


async def load_files(ctx: BotContext) -> tuple[KnowledgeBase, Knowledge]:
    """KNOWLEDGE_DIR read and indexed off the event loop; KnowledgeError lists every problem."""
    settings = ctx.settings
    kb = await asyncio.to_thread(load_knowledge, settings.knowledge_dir, settings.link_overrides)
    return kb, await asyncio.to_thread(Knowledge.build, kb)


@dataclass(frozen=True, slots=True)
class Tally:
    """Which replicas took a reload: the ones with its version, and the others with why."""

    took: int
    live: int
    notes: tuple[str, ...]


def live_within(ctx: BotContext) -> timedelta:
    # Three missed heartbeats and a replica no longer counts as running.
    return timedelta(seconds=3 * ctx.replica.interval + 2)


async def report(ctx: BotContext) -> int:
    """The heartbeat: what this replica has loaded; returns the version every replica should have."""
    state, kb = ctx.replica, ctx.knowledge.kb
    return await ctx.store.report_replica(
        state.replica_id,
        version=state.version,
        fingerprint=knowledge_fingerprint(kb),
        articles=len(kb.articles),
        error=state.error,
        started_at=state.started_at,
    )


async def follow(ctx: BotContext, shared: int) -> None:
    """Another replica reloaded: load the files here too, keeping the old knowledge on any error."""
    state = ctx.replica
    async with state.lock:
        if shared <= state.version:
            return
        try:
            kb, knowledge = await load_files(ctx)
        except KnowledgeError as exc:
            state.error = _problems(exc)
            log.warning("replica %s kept its knowledge at version %d: %s", state.replica_id, shared, exc)
        else:
            diff = diff_knowledge(ctx.knowledge.kb, kb)
            ctx.knowledge = knowledge
            state.error = None
            log.info(
                "replica %s reloaded knowledge version %d: +%d -%d ~%d",
                state.replica_id,
                shared,
                len(diff.added),
                len(diff.removed),
                len(diff.changed),
            )
        state.version = shared
        await report(ctx)  # at once: the replica that asked is counting


async def reload_everywhere(ctx: BotContext, who: str, *, wait: float | None = None) -> OutgoingMessage:
    """Reload here; on success tell every replica and count those that took it within `wait` seconds."""
    state = ctx.replica
    async with state.lock:
        try:
            kb, knowledge = await load_files(ctx)
        except KnowledgeError as exc:
            log.warning("knowledge reload by %s refused: %d problem(s)", who, len(exc.problems))
            return cards.reload_failed([str(p) for p in exc.problems])
        diff = diff_knowledge(ctx.knowledge.kb, kb)
        ctx.knowledge = knowledge
        version = await ctx.store.bump_knowledge_version(who)
        state.version, state.error = version, None
        await report(ctx)
    log.info(
        "knowledge reloaded by %s (version %d): +%d -%d ~%d",
        who,
        version,
        len(diff.added),
        len(diff.removed),
        len(diff.changed),
    )
    tally = await _count(ctx, version, knowledge_fingerprint(kb), wait)
    return cards.reload_done(
        diff.added,
        diff.removed,
        diff.changed,
        len(kb.articles),
        replicas=(tally.took, tally.live, tally.notes),
    )


async def _count(ctx: BotContext, version: int, fingerprint: str, wait: float | None) -> Tally:
    """Wait until every running replica has the version (or the time is up), then say who has what."""
    interval = ctx.replica.interval
    deadline = time.monotonic() + (wait if wait is not None else 2 * interval + 5)
    while True:
        live = await ctx.store.live_replicas(live_within(ctx))
        if all(r.knowledge_version >= version for r in live) or time.monotonic() >= deadline:
            return _tally(live, version, fingerprint, ctx.replica.replica_id)
        await asyncio.sleep(min(0.1, interval / 4))


class ReplicaSync:
    """This process's heartbeat among the replicas, and its follower: when the shared version moves past
    what it has loaded (a reload on another replica), it loads the files again."""

    def __init__(self, ctx: BotContext) -> None:
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._unavailable = False

    async def start(self) -> None:
        state = self.ctx.replica
        try:
            # This process loaded the files at start, so it has whatever version is current.
            state.version = await self.ctx.store.knowledge_version()
            await report(self.ctx)
        except StoreUnavailable as exc:
            log.warning("replica %s: cannot join the replicas yet: %s", state.replica_id, exc)
        self._task = asyncio.create_task(self._run(), name="replicas")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(StoreUnavailable):
            await self.ctx.store.leave(self.ctx.replica.replica_id)

    async def _run(self) -> None:
        me = self.ctx.replica.replica_id
        while True:
            await asyncio.sleep(self.ctx.replica.interval)
            try:
                shared = await report(self.ctx)
                if self._unavailable:
                    log.info("replica %s: heartbeat works again", me)
                    self._unavailable = False
                if shared > self.ctx.replica.version:
                    await follow(self.ctx, shared)
            except StoreUnavailable as exc:
                if not self._unavailable:
                    log.warning("replica %s: heartbeat failed: %s", me, exc)
                self._unavailable = True
            except Exception:
                # The loop's one error boundary: a bug must not stop this replica from following reloads.
                log.exception("replica %s: heartbeat failed unexpectedly", me)


def _tally(live: Sequence[Replica], version: int, fingerprint: str, me: str) -> Tally:
    took, notes = 0, []
    for replica in live:
        name = "this replica" if replica.replica_id == me else replica.replica_id
        if replica.knowledge_version < version:
            notes.append(f"{name} has not confirmed yet; it loads the files at its next heartbeat")
        elif replica.knowledge_error:
            notes.append(f"{name} kept its old knowledge: {replica.knowledge_error}")
        else:
            took += 1
            if replica.knowledge_fingerprint != fingerprint:
                notes.append(
                    f"{name} loaded different files ({replica.articles} articles): is its KNOWLEDGE_DIR the same?"
                )
    return Tally(took, len(live), tuple(notes))


def _problems(exc: KnowledgeError) -> str:
    first = str(exc.problems[0]) if exc.problems else "unknown problem"
    count = len(exc.problems)
    return f"{count} problem{'s' if count != 1 else ''}, the first: {first}"[:MAX_ERROR_CHARS]
