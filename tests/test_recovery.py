"""Real processes killed with SIGKILL at their default lease: a restart, or a live replica, takes the dead one's
events at once (its liveness lock is gone), and a slow live worker keeps its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakewebex import FakeWebex
from tests.harness import SECRET
from tests.procs import ServeProcess, bot_messages, fresh_pg_database, pg_url, requested, until

RESTART_BOUND = 3.0  # seconds from "ready" to the answer of what the killed process held
REPLICA_BOUND = 10.0  # seconds from the kill to a live replica's answer
HOLD = 60.0


@pytest.fixture
async def procs() -> AsyncIterator[list[ServeProcess]]:
    started: list[ServeProcess] = []
    yield started
    for proc in started:
        await proc.close()
        print(f"----- {proc.log_path.name} (pid {proc.pid}) -----\n{proc.log()[-4000:]}")


@pytest.fixture
def world(fake_webex: FakeWebex) -> dict[str, Any]:
    alice = fake_webex.add_person("alice@example.com", "Alice Doe")
    return {"alice": alice, "sales": fake_webex.add_room("group", "Sales floor")["id"]}


def env(fake: FakeWebex, database_url: str, **extra: str) -> dict[str, str]:
    # No WORKER_LEASE_SECONDS: the default 30 s lease, which a prompt takeover must not wait for.
    return {
        "WEBEX_ACCESS_TOKEN": fake.token,
        "WEBEX_WEBHOOK_SECRET": SECRET,
        "WEBEX_API_URL": fake.base_url,
        "DATABASE_URL": database_url,
        **extra,
    }


async def serve(procs: list[ServeProcess], values: dict[str, str], tmp_path: Path) -> ServeProcess:
    proc = ServeProcess(values, tmp_path, f"serve-{len(procs) + 1}")
    procs.append(proc)
    await proc.start()
    await proc.wait_ready()
    return proc


async def held_then_killed(
    fake: FakeWebex, world: dict[str, Any], proc: ServeProcess, count: int
) -> list[dict[str, Any]]:
    """`count` messages acknowledged by `proc`, each stalled in its GET /messages/{id}; then SIGKILL."""
    fake.delay("GET", "/messages/", HOLD)
    msgs = [fake.add_message(world["sales"], world["alice"], f"Error: 1000:1002 ({n})") for n in range(count)]
    for msg in msgs:
        assert await proc.post(fake.message_created_envelope(msg)) == 200
    await until(
        lambda: len(requested(fake, "GET", "/messages/")) >= count, 10, "the worker to fetch them all"
    )
    proc.kill9()
    assert await proc.wait_exit(10) == -9
    fake.clear_faults()
    assert bot_messages(fake) == []
    return msgs


def answered(fake: FakeWebex, msgs: list[dict[str, Any]]) -> bool:
    return all(bot_messages(fake, parent_id=m["id"]) for m in msgs)


async def test_sqlite_restart_answers_what_the_killed_process_held_within_3s(
    fake_webex: FakeWebex, world: dict[str, Any], procs: list[ServeProcess], tmp_path: Path
) -> None:
    values = env(fake_webex, f"sqlite:///{tmp_path / 'bot.db'}")
    first = await serve(procs, values, tmp_path)
    msgs = await held_then_killed(fake_webex, world, first, 5)
    await serve(procs, values, tmp_path)
    ready = time.monotonic()
    await until(lambda: answered(fake_webex, msgs), 15, "every held message to be answered")
    took = time.monotonic() - ready
    assert took < RESTART_BOUND, f"answered {took:.1f}s after the restart was ready (lease 30 s)"
    await asyncio.sleep(0.5)
    assert [len(bot_messages(fake_webex, parent_id=m["id"])) for m in msgs] == [1] * len(msgs)


@pytest.fixture
async def database() -> AsyncIterator[str]:
    async with fresh_pg_database("test_recovery") as name:
        yield name


async def test_postgres_live_replica_takes_a_dead_replicas_events_within_10s(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    values = env(fake_webex, pg_url(database))
    doomed = await serve(procs, values, tmp_path)
    await serve(procs, values, tmp_path)  # the survivor, idle: nothing is delivered to it
    msgs = await held_then_killed(fake_webex, world, doomed, 3)
    killed = time.monotonic()
    await until(lambda: answered(fake_webex, msgs), 20, "the survivor to answer")
    took = time.monotonic() - killed
    assert took < REPLICA_BOUND, f"the live replica answered {took:.1f}s after the kill (lease 30 s)"
    await asyncio.sleep(0.5)
    assert [len(bot_messages(fake_webex, parent_id=m["id"])) for m in msgs] == [1] * len(msgs)


async def test_postgres_slow_live_worker_keeps_its_events(
    fake_webex: FakeWebex, world: dict[str, Any], database: str, procs: list[ServeProcess], tmp_path: Path
) -> None:
    # The shortest lease there is, and Webex three times slower: only renewals keep the event with its worker.
    values = env(fake_webex, pg_url(database), WORKER_LEASE_SECONDS="2")
    slow = await serve(procs, values, tmp_path)
    await serve(procs, values, tmp_path)
    fake_webex.delay("GET", "/messages/", 6.0)
    msg = fake_webex.add_message(world["sales"], world["alice"], "Error: 1000:1002")
    assert await slow.post(fake_webex.message_created_envelope(msg)) == 200
    await until(lambda: bool(bot_messages(fake_webex, parent_id=msg["id"])), 20, "the slow reply")
    await asyncio.sleep(1.0)
    assert len(requested(fake_webex, "GET", f"/messages/{msg['id']}")) == 1, "the other replica took it"
    assert len(bot_messages(fake_webex, parent_id=msg["id"])) == 1
    assert "took over" not in "".join(p.log() for p in procs)
