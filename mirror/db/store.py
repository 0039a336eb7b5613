"""MetadataStore: the queries the registry logic needs, over async SQLAlchemy.

Access statistics (last access, hits) are counted in memory and written in batches
by :meth:`MetadataStore.flush_access`, so serving a cached blob costs no DB write.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update

from mirror.db.core import platform_row
from mirror.db.models import (
    BlobRow,
    ManifestPlatform,
    ManifestRow,
    ReferrersRow,
    RepositoryLink,
    TagRow,
)
from mirror.db.records import OfflineRecords
from mirror.platforms import Platform


@dataclass(frozen=True)
class TagEntry:
    """Where a tag pointed when last checked."""

    digest: str
    media_type: str
    checked_at: float


@dataclass(frozen=True)
class ManifestEntry:
    """A cached manifest's metadata."""

    digest: str
    media_type: str
    size: int


class MetadataStore(OfflineRecords):
    """All reads and writes of the metadata database."""

    # --- blobs -------------------------------------------------------------------

    def known_blob_size(self, digest: str) -> int | None:
        """A blob size this process already knows, without any I/O (None: unknown)."""
        return None

    async def blob_size(self, digest: str) -> int | None:
        """The size of a cached blob, or None if unknown."""
        async with self.engine.connect() as c:
            return await c.scalar(select(BlobRow.size).where(BlobRow.digest == digest))

    async def add_blob(
        self, digest: str, size: int, media_type: str | None, upstream: str, repository: str
    ) -> None:
        """Record a verified blob file and that ``repository`` serves it."""
        now = time.time()
        row = dict(
            digest=digest, size=size, media_type=media_type, created_at=now, last_access=now, hits=0
        )
        link = dict(
            upstream=upstream, repository=repository, digest=digest, kind="blob", linked_at=now
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._blob_batch.append((row, link, done))
        if self._blob_writer is None or self._blob_writer.done():
            self._blob_writer = asyncio.create_task(self._write_blob_batches())
        await done  # the row is written when this returns, in a batch with its neighbours

    async def drain(self) -> None:
        """Wait for the blob rows being written (at shutdown: no connection is left
        half-used when the engine closes)."""
        writer = self._blob_writer
        if writer is not None and not writer.done():
            await asyncio.wait([writer], timeout=10)

    async def _write_blob_batches(self) -> None:
        """Blobs finishing together share one transaction (a cold pull of many small
        layers otherwise pays a transaction per layer)."""
        await asyncio.sleep(0)  # let the blobs completing in this same tick join
        while self._blob_batch:
            batch, self._blob_batch = self._blob_batch, []
            try:
                async with self.engine.begin() as c:
                    await c.execute(self._ignore(BlobRow), [row for row, _, _ in batch])
                    await c.execute(self._ignore(RepositoryLink), [link for _, link, _ in batch])
            except Exception as exc:
                for _, _, waiter in batch:
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for _, _, waiter in batch:
                if not waiter.done():
                    waiter.set_result(None)

    # --- manifests -----------------------------------------------------------------

    async def manifest(self, digest: str) -> ManifestEntry | None:
        """A cached manifest's metadata, if cached."""
        async with self.engine.connect() as c:
            row = (
                await c.execute(
                    select(ManifestRow.media_type, ManifestRow.size).where(
                        ManifestRow.digest == digest
                    )
                )
            ).first()
            return ManifestEntry(digest, row.media_type, row.size) if row else None

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
        """Record a cached manifest, link it and what it references to the repository;
        with ``tag`` (tag, accept class), point that tag at it in the same transaction."""
        now = time.time()
        async with self.engine.begin() as s:
            if tag is not None:
                await s.execute(self._tag_upsert(upstream, repository, *tag, digest, media_type))
            for table in (ManifestRow, BlobRow):
                values = dict(
                    digest=digest,
                    media_type=media_type,
                    size=size,
                    created_at=now,
                    last_access=now,
                    hits=0,
                )
                await s.execute(self._ignore(table), [values])
            await self._link(s, upstream, repository, [(digest, "manifest"), *children], now)

    # --- repository links ----------------------------------------------------------

    async def is_linked(self, upstream: str, repository: str, digest: str) -> bool:
        """Whether ``repository`` was seen to reference ``digest``."""
        async with self.engine.connect() as s:
            found = await s.scalar(
                select(RepositoryLink.kind).where(
                    RepositoryLink.upstream == upstream,
                    RepositoryLink.repository == repository,
                    RepositoryLink.digest == digest,
                )
            )
            return found is not None

    async def link(self, upstream: str, repository: str, digest: str, kind: str) -> None:
        """Record that the upstream confirmed ``digest`` in ``repository``."""
        async with self.engine.begin() as s:
            await self._link(s, upstream, repository, [(digest, kind)], time.time())

    # --- tags ----------------------------------------------------------------------

    async def tag(self, upstream: str, repository: str, tag: str, accept: str) -> TagEntry | None:
        """Where a tag pointed for this class of Accept, when last checked."""
        async with self.engine.connect() as c:
            row = (
                await c.execute(
                    select(TagRow.digest, TagRow.media_type, TagRow.checked_at).where(
                        TagRow.upstream == upstream,
                        TagRow.repository == repository,
                        TagRow.tag == tag,
                        TagRow.accept == accept,
                    )
                )
            ).first()
            return TagEntry(row.digest, row.media_type, row.checked_at) if row else None

    async def any_tag(self, upstream: str, repository: str, tag: str) -> TagEntry | None:
        """Where a tag pointed for any class of Accept (the newest check wins)."""
        async with self._sessions() as s:
            row = await s.scalar(
                select(TagRow)
                .where(
                    TagRow.upstream == upstream, TagRow.repository == repository, TagRow.tag == tag
                )
                .order_by((TagRow.accept == "*").desc(), TagRow.checked_at.desc())
                .limit(1)
            )
            return TagEntry(row.digest, row.media_type, row.checked_at) if row else None

    async def cached_platforms(self, upstream: str, repository: str) -> list[Platform]:
        """Platforms of the image manifests cached for a repository."""
        async with self._sessions() as s:
            rows = await s.scalars(
                select(ManifestPlatform)
                .join(RepositoryLink, RepositoryLink.digest == ManifestPlatform.digest)
                .join(ManifestRow, ManifestRow.digest == ManifestPlatform.digest)
                .where(RepositoryLink.upstream == upstream, RepositoryLink.repository == repository)
            )
            found = {
                Platform(
                    r.os,
                    r.architecture,
                    r.variant,
                    r.os_version,
                    tuple(f for f in r.features.split(",") if f),
                )
                for r in rows
            }
        return sorted(found, key=str)

    async def put_tag(
        self, upstream: str, repository: str, tag: str, accept: str, digest: str, media_type: str
    ) -> None:
        """Record (or refresh) where a tag points, checked now."""
        async with self.engine.begin() as c:
            await c.execute(self._tag_upsert(upstream, repository, tag, accept, digest, media_type))

    def _tag_upsert(
        self, upstream: str, repository: str, tag: str, accept: str, digest: str, media_type: str
    ) -> Any:
        values = dict(
            upstream=upstream,
            repository=repository,
            tag=tag,
            accept=accept,
            digest=digest,
            media_type=media_type,
            checked_at=time.time(),
        )
        return self._upsert_stmt(TagRow, values, ("upstream", "repository", "tag", "accept"))

    async def tags(self, upstream: str, repository: str) -> list[str]:
        """The tags known for a repository, sorted."""
        async with self._sessions() as s:
            result = await s.scalars(
                select(TagRow.tag)
                .where(TagRow.upstream == upstream, TagRow.repository == repository)
                .distinct()
                .order_by(TagRow.tag)
            )
            return list(result)

    async def repositories(self) -> list[tuple[str, str]]:
        """Every (upstream, repository) with cached content, sorted."""
        async with self._sessions() as s:
            result = await s.execute(
                select(RepositoryLink.upstream, RepositoryLink.repository)
                .distinct()
                .order_by(RepositoryLink.upstream, RepositoryLink.repository)
            )
            return [(u, r) for u, r in result]

    # --- referrers -----------------------------------------------------------------

    async def referrers(
        self, upstream: str, repository: str, subject: str, artifact_type: str
    ) -> TagEntry | None:
        """The last referrers index relayed for a subject."""
        async with self._sessions() as s:
            row = await s.get(ReferrersRow, (upstream, repository, subject, artifact_type))
            return TagEntry(row.digest, "", row.checked_at) if row else None

    async def put_referrers(
        self, upstream: str, repository: str, subject: str, artifact_type: str, digest: str
    ) -> None:
        """Record the referrers index relayed now for a subject."""
        await self._upsert(
            ReferrersRow,
            dict(
                upstream=upstream,
                repository=repository,
                subject=subject,
                artifact_type=artifact_type,
                digest=digest,
                checked_at=time.time(),
            ),
            ("upstream", "repository", "subject", "artifact_type"),
        )

    # --- platforms ---------------------------------------------------------------------

    async def put_platforms(self, items: Iterable[tuple[str, Platform, str]]) -> None:
        """Record (digest, platform, source) facts; an index entry wins over a config."""
        rows = [platform_row(d, p, src) for d, p, src in items]
        if not rows:
            return
        async with self._sessions.begin() as s:
            stmt = self._insert(ManifestPlatform).values(rows)  # type: ignore[attr-defined]
            await s.execute(stmt.on_conflict_do_nothing())

    async def platforms(self, digests: Iterable[str]) -> dict[str, Platform]:
        """Known platforms of the given manifest digests."""
        wanted = list(digests)
        out: dict[str, Platform] = {}
        async with self._sessions() as s:
            for start in range(0, len(wanted), 500):
                rows = await s.scalars(
                    select(ManifestPlatform).where(
                        ManifestPlatform.digest.in_(wanted[start : start + 500])
                    )
                )
                for r in rows:
                    features = tuple(f for f in r.features.split(",") if f)
                    out[r.digest] = Platform(
                        r.os, r.architecture, r.variant, r.os_version, features
                    )
        return out

    # --- access statistics -----------------------------------------------------------

    def record_access(self, kind: str, digest: str) -> None:
        """Count a hit in memory; :meth:`flush_access` writes it."""
        self._access[(kind, digest)] += 1
        self._access_time[(kind, digest)] = time.time()

    async def flush_access(self) -> int:
        """Write the counted hits in one transaction; returns how many rows."""
        if not self._access:
            return 0
        counts, times = self._access, self._access_time
        self._access, self._access_time = Counter(), {}
        async with self._sessions.begin() as s:
            for (kind, digest), hits in counts.items():
                table = ManifestRow if kind == "manifest" else BlobRow
                await s.execute(
                    update(table)
                    .where(table.digest == digest)
                    .values(hits=table.hits + hits, last_access=times[(kind, digest)])
                )
        return len(counts)

    # --- start-up reconciliation -------------------------------------------------------

    async def all_blob_digests(self) -> set[str]:
        """Every blob digest with a row."""
        async with self._sessions() as s:
            return set(await s.scalars(select(BlobRow.digest)))

    async def forget(self, digests: Iterable[str]) -> None:
        """Drop rows of content whose file is gone (links stay: they are facts)."""
        digests = list(digests)
        async with self._sessions.begin() as s:
            for start in range(0, len(digests), 500):
                chunk = digests[start : start + 500]
                await s.execute(delete(BlobRow).where(BlobRow.digest.in_(chunk)))
                await s.execute(delete(ManifestRow).where(ManifestRow.digest.in_(chunk)))

    async def adopt(self, digest: str, size: int) -> None:
        """Record a verified file that has no row (a crash between rename and insert)."""
        now = time.time()
        async with self._sessions.begin() as s:
            stmt = self._insert(BlobRow).values(  # type: ignore[attr-defined]
                digest=digest, size=size, media_type=None, created_at=now, last_access=now, hits=0
            )
            await s.execute(stmt.on_conflict_do_nothing())
