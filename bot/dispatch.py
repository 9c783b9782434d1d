"""A table from a key to its handler: gidgethub's routing.Router, keyed by a command kind or a submit type."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
H = TypeVar("H")


class Router(Generic[K, H]):
    """One handler per key, registered by decorator; routers combine (a module's own table joins the main one)."""

    def __init__(self, *others: Router[K, H]) -> None:
        self._table: dict[K, H] = {}
        for other in others:
            for key, handler in other.items():
                self._add(key, handler)

    def register(self, *keys: K) -> Callable[[H], H]:
        def add(handler: H) -> H:
            for key in keys:
                self._add(key, handler)
            return handler

        return add

    def _add(self, key: K, handler: H) -> None:
        # Two handlers for one key is a wiring mistake that would silently drop one of them.
        if key in self._table:
            raise ValueError(f"{key!r} already has a handler")
        self._table[key] = handler

    def get(self, key: K) -> H | None:
        return self._table.get(key)

    def items(self) -> Iterator[tuple[K, H]]:
        yield from self._table.items()

    def __contains__(self, key: object) -> bool:
        return key in self._table
