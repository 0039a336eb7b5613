"""What admin commands record: pins, lists made from the command line, bundle imports."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

from mirror.db.core import StoreCore, platform_row
from mirror.db.models import (
    BlobRow,
    ManifestPlatform,
    ManifestRow,
    Pin,
    RepositoryLink,
    SynthesizedList,
    TagRow,
)
from mirror.platforms import Platform


@dataclass(frozen=True)
class ImportedImage:
    """One image of a bundle, recorded by :meth:`MetadataStore.record_import` at once."""

    upstream: str
    repository: str
    blobs: list[tuple[str, int, str | None]]  # (digest, size, media type)
    manifests: list[tuple[str, str, int, list[tuple[str, str]]]]  # (digest, type, size, children)
    platforms: list[tuple[str, Platform, str]]  # (digest, platform, source)
    tag: tuple[str, str, str] | None  # (tag, digest, media type), for every Accept ("*")


class OfflineRecords(StoreCore):
    """Pins, stored lists and bundle imports (not on the serving hot path)."""

    # --- pins --------------------------------------------------------------------------------

    async def pin(self, digests: Iterable[str], reason: str) -> int:
        """Record that content must never be evicted; returns how many were new."""
        rows = [dict(digest=d, reason=reason[:512], pinned_at=time.time()) for d in set(digests)]
        if not rows:
            return 0
        async with self._sessions.begin() as s:
            before = await s.scalar(select(func.count()).select_from(Pin)) or 0
            stmt = self._insert(Pin).values(rows)  # type: ignore[attr-defined]
            await s.execute(stmt.on_conflict_do_nothing())
            after = await s.scalar(select(func.count()).select_from(Pin)) or 0
        return after - before

    async def pinned(self) -> set[str]:
        """Every pinned digest."""
        async with self._sessions() as s:
            return set(await s.scalars(select(Pin.digest)))

    # --- lists created from the command line ------------------------------------------------

    async def put_list(self, registry: str, repository: str, tag: str, sources: str) -> None:
        """Create or replace a synthesized list definition (sources as JSON)."""
        await self._upsert(
            SynthesizedList,
            dict(
                upstream=registry,
                repository=repository,
                tag=tag,
                sources=sources,
                created_at=time.time(),
            ),
            ("upstream", "repository", "tag"),
        )

    async def lists(self) -> list[tuple[str, str, str, str]]:
        """Every stored list: (registry, repository, tag, sources JSON)."""
        async with self._sessions() as s:
            rows = await s.scalars(select(SynthesizedList))
            return [(r.upstream, r.repository, r.tag, r.sources) for r in rows]

    # --- bundle imports ------------------------------------------------------------------

    async def unrecorded(self, upstream: str, repository: str, kinds: dict[str, str]) -> set[str]:
        """Of ``kinds`` (digest -> "manifest" or "blob"), the digests that lack their row
        or their link to ``repository``."""
        wanted = list(kinds)
        have: set[str] = set()
        linked: set[str] = set()
        async with self._sessions() as s:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                have |= set(
                    await s.scalars(select(BlobRow.digest).where(BlobRow.digest.in_(chunk)))
                )
                manifests = set(
                    await s.scalars(select(ManifestRow.digest).where(ManifestRow.digest.in_(chunk)))
                )
                have -= {d for d in chunk if kinds[d] == "manifest" and d not in manifests}
                linked |= set(
                    await s.scalars(
                        select(RepositoryLink.digest).where(
                            RepositoryLink.upstream == upstream,
                            RepositoryLink.repository == repository,
                            RepositoryLink.digest.in_(chunk),
                        )
                    )
                )
        return {d for d in wanted if d not in have or d not in linked}

    async def record_import(self, image: ImportedImage) -> None:
        """Record an imported image in ONE transaction: blob and manifest rows, links and
        platforms, and its tag last, so a tag never points at unrecorded content."""
        now = time.time()
        counters = dict(created_at=now, last_access=now, hits=0)
        blob_rows = [dict(digest=d, size=n, media_type=t, **counters) for d, n, t in image.blobs]
        blob_rows += [
            dict(digest=d, size=n, media_type=t, **counters) for d, t, n, _ in image.manifests
        ]
        manifest_rows = [
            dict(digest=d, media_type=t, size=n, **counters) for d, t, n, _ in image.manifests
        ]
        links = [(d, "blob") for d, _, _ in image.blobs]
        for digest, _, _, children in image.manifests:
            links += [(digest, "manifest"), *children]
        platforms = [platform_row(d, p, src) for d, p, src in image.platforms]
        async with self._sessions.begin() as s:
            for table, rows in (
                (BlobRow, blob_rows),
                (ManifestRow, manifest_rows),
                (ManifestPlatform, platforms),
            ):
                for start in range(0, len(rows), 100):
                    stmt = self._insert(table).values(rows[start : start + 100])  # type: ignore[attr-defined]
                    await s.execute(stmt.on_conflict_do_nothing())
            for start in range(0, len(links), 100):
                await self._link(
                    s, image.upstream, image.repository, links[start : start + 100], now
                )
            if image.tag is not None:
                tag, digest, media_type = image.tag
                values = dict(
                    upstream=image.upstream,
                    repository=image.repository,
                    tag=tag,
                    accept="*",
                    digest=digest,
                    media_type=media_type,
                    checked_at=now,
                )
                stmt = self._insert(TagRow).values(**values)  # type: ignore[attr-defined]
                await s.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["upstream", "repository", "tag", "accept"],
                        set_={k: values[k] for k in ("digest", "media_type", "checked_at")},
                    )
                )
