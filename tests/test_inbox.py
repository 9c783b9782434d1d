"""Group commit: concurrent webhook deliveries share inbox transactions and each gets the right answer."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from bot.inbox import InboxWriter
from bot.store import Store, StoreUnavailable


async def test_concurrent_enqueues_share_commits_and_dedupe(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite:///{tmp_path / 'inbox.db'}")
    try:
        writer = InboxWriter(store)
        ids = [f"e{n % 150}" for n in range(300)]  # every id twice
        results = await asyncio.gather(*(writer.enqueue(i, "messages", json.dumps({"id": i})) for i in ids))
        assert sum(results) == 150  # each id is new exactly once
        assert {i for i, new in zip(ids, results, strict=True) if new} == set(ids)
        assert (await store.inbox_counts())["pending"] == 150
        assert await writer.enqueue("e1", "messages", '{"id": "e1"}') is False
    finally:
        await store.close()


async def test_a_failed_commit_fails_every_waiter(tmp_path: Path) -> None:
    path = tmp_path / "inbox.db"
    store = await Store.open(f"sqlite:///{path}")
    writer = InboxWriter(store)
    await store.close()  # drops the connection; the next use reconnects to the path ...
    for leftover in tmp_path.iterdir():
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()  # the .bot folder is a directory
    path.mkdir()  # ... where a directory now stands: SQLite cannot open it
    results = await asyncio.gather(
        *(writer.enqueue(f"x{n}", "messages", "{}") for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, StoreUnavailable) for r in results), results
    with pytest.raises(StoreUnavailable):
        await writer.enqueue("y", "messages", "{}")
