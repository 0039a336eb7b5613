"""A bounded in-memory mapping that forgets the least recently used entries."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _one(_value: object) -> int:
    return 1


class LRU(Generic[K, V]):
    """At most ``limit`` entries; with ``weigh``, entries weighing ``limit`` in all (bytes of
    content, say; an entry heavier than that alone is not kept)."""

    def __init__(self, limit: int, weigh: Callable[[V], int] = _one) -> None:
        self._items: OrderedDict[K, V] = OrderedDict()
        self._limit = limit
        self._weigh = weigh
        self._weight = 0

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        if weight > self._limit:
            return
        self.pop(key)
        self._items[key] = value
        self._weight += weight
        while self._weight > self._limit:
            _, old = self._items.popitem(last=False)
            self._weight -= self._weigh(old)

    def pop(self, key: K) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self._weight -= self._weigh(old)
