"""An in-memory layer in front of the metadata DB for the hot path.

Content by digest is immutable, so what is known about it (a blob's size, a manifest's
type, that a repository references it) is cached without expiry; only removals
(`forget`) drop entries. Tag answers are kept for at most ``TAG_MEMO_SECONDS`` so that
changes written by another process on the same data dir (an import, a prefetch) are
seen promptly. Serving a hit then costs no DB round trip at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from mirror.db.store import ManifestEntry, MetadataStore, TagEntry
from mirror.lru import LRU

#: How long a tag answer read from the DB is reused without reading it again.
TAG_MEMO_SECONDS = 1.0


class CachedMetadataStore(MetadataStore):
    """MetadataStore with memoized digest facts and short-lived tag answers."""

    def __init__(self, *args: object, size: int = 200_000, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self._blob_sizes: LRU[str, int] = LRU(size)
        self._manifests: LRU[str, ManifestEntry] = LRU(size)
        self._links: LRU[tuple[str, str, str], bool] = LRU(size)
        self._tags: LRU[tuple[str, str, str, str], tuple[TagEntry, float]] = LRU(size)

    def known_blob_size(self, digest: str) -> int | None:
        return self._blob_sizes.get(digest)

    async def blob_size(self, digest: str) -> int | None:

        size = self._blob_sizes.get(digest)
        if size is None:
            size = await super().blob_size(digest)
            if size is not None:
                self._blob_sizes.put(digest, size)
        return size

    async def add_blob(
        self, digest: str, size: int, media_type: str | None, upstream: str, repository: str
    ) -> None:
        await super().add_blob(digest, size, media_type, upstream, repository)
        self._blob_sizes.put(digest, size)
        self._links.put((upstream, repository, digest), True)

    async def manifest(self, digest: str) -> ManifestEntry | None:
        entry = self._manifests.get(digest)
        if entry is None:
            entry = await super().manifest(digest)
            if entry is not None:
                self._manifests.put(digest, entry)
        return entry

    async def add_manifest(
        self,
        digest: str,
        media_type: str,
        size: int,
        upstream: str,
        repository: str,
        children: Iterable[tuple[str, str]],
        tag: tuple[str, str] | None = None,
    ) -> None:
        children = list(children)
        await super().add_manifest(digest, media_type, size, upstream, repository, children, tag)
        self._manifests.put(digest, ManifestEntry(digest, media_type, size))
        for child, _ in [(digest, "manifest"), *children]:
            self._links.put((upstream, repository, child), True)
        if tag is not None:
            entry = TagEntry(digest, media_type, time.time())
            self._tags.put((upstream, repository, *tag), (entry, time.monotonic()))

    async def is_linked(self, upstream: str, repository: str, digest: str) -> bool:
        key = (upstream, repository, digest)
        if self._links.get(key):
            return True
        linked = await super().is_linked(upstream, repository, digest)
        if linked:
            self._links.put(key, True)
        return linked

    async def link(self, upstream: str, repository: str, digest: str, kind: str) -> None:
        await super().link(upstream, repository, digest, kind)
        self._links.put((upstream, repository, digest), True)

    async def tag(self, upstream: str, repository: str, tag: str, accept: str) -> TagEntry | None:
        key = (upstream, repository, tag, accept)
        memo = self._tags.get(key)
        now = time.monotonic()
        if memo is not None and now - memo[1] < TAG_MEMO_SECONDS:
            return memo[0]
        entry = await super().tag(upstream, repository, tag, accept)
        if entry is not None:
            self._tags.put(key, (entry, now))
        return entry

    async def put_tag(
        self, upstream: str, repository: str, tag: str, accept: str, digest: str, media_type: str
    ) -> None:
        await super().put_tag(upstream, repository, tag, accept, digest, media_type)
        entry = TagEntry(digest, media_type, time.time())
        self._tags.put((upstream, repository, tag, accept), (entry, time.monotonic()))

    async def forget(self, digests: Iterable[str]) -> None:
        digests = list(digests)
        await super().forget(digests)
        for digest in digests:
            self._blob_sizes.pop(digest)
            self._manifests.pop(digest)
