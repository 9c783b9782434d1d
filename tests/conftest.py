"""Shared fixtures: the real knowledge base and its triage index, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.knowledge import KnowledgeBase, load_knowledge
from bot.triage import TriageIndex

pytest_plugins = ["tests.fakewebex"]

ROOT = Path(__file__).resolve().parents[1]
KNOWLEDGE_DIR = ROOT / "knowledge"
# The steering repo's shared/ sits next to the checkout; a git worktree is one directory deeper.
SHARED = next((p / "shared" for p in ROOT.parents if (p / "shared").is_dir()), ROOT.parent / "shared")


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return load_knowledge(KNOWLEDGE_DIR)


@pytest.fixture(scope="session")
def index(kb: KnowledgeBase) -> TriageIndex:
    return TriageIndex.build(kb)
