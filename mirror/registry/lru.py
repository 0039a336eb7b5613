"""A bounded in-memory LRU of content bytes by digest (manifests, small blobs)."""

from __future__ import annotations

from collections import OrderedDict


class MemoryLRU:
    """A bounded in-memory LRU of content bytes by digest, in front of the disk."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._max = max_bytes

    def get(self, digest: str) -> bytes | None:
        body = self._items.get(digest)
        if body is not None:
            self._items.move_to_end(digest)
        return body

    def put(self, digest: str, body: bytes) -> None:
        if digest in self._items or len(body) > self._max:
            return
        self._items[digest] = body
        self._bytes += len(body)
        while self._bytes > self._max:
            _, old = self._items.popitem(last=False)
            self._bytes -= len(old)
