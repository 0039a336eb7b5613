"""StoreCore: the engine, sessions and statement helpers shared by the metadata store."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from mirror.db.models import RepositoryLink
from mirror.db.session import sessionmaker
from mirror.platforms import Platform


def platform_row(digest: str, platform: Platform, source: str) -> dict[str, Any]:
    """The manifest_platforms row of one (digest, platform, source) fact."""
    return dict(
        digest=digest,
        os=platform.os,
        architecture=platform.architecture,
        variant=platform.variant,
        os_version=platform.os_version,
        features=",".join(platform.features),
        source=source,
    )


class StoreCore:
    """The engine, sessions and statement helpers every part of the store shares."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sessions: async_sessionmaker[AsyncSession] = sessionmaker(engine)
        self._access: Counter[tuple[str, str]] = Counter()
        self._access_time: dict[tuple[str, str], float] = {}
        self._ignores: dict[type, Any] = {}
        self._blob_batch: list[tuple[dict[str, Any], dict[str, Any], asyncio.Future[None]]] = []
        self._blob_writer: asyncio.Task[None] | None = None

    def _insert(self, table: type) -> object:
        # Upserts differ per dialect; SQLite and PostgreSQL share this spelling. The
        # plain Table, not the ORM class: ORM-enabled inserts cost ~1 ms of CPU each.
        target = getattr(table, "__table__", table)
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(target)
        return sqlite_insert(target)

    def _ignore(self, table: type) -> Any:
        """INSERT ... ON CONFLICT DO NOTHING for executemany: one statement per table,
        compiled once and cached (a statement with inline values compiles every time)."""
        stmt = self._ignores.get(table)
        if stmt is None:
            stmt = self._insert(table).on_conflict_do_nothing()  # type: ignore[attr-defined]
            self._ignores[table] = stmt
        return stmt

    def _upsert_stmt(self, table: type, values: dict[str, Any], keys: tuple[str, ...]) -> Any:
        """INSERT a row, or UPDATE its columns other than ``keys`` if it exists."""
        stmt = self._insert(table).values(**values)  # type: ignore[attr-defined]
        update = {k: v for k, v in values.items() if k not in keys}
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=update)

    async def _upsert(self, table: type, values: dict[str, Any], keys: tuple[str, ...]) -> None:
        """Insert a row, or update its columns other than ``keys`` if it exists."""
        async with self.engine.begin() as c:
            await c.execute(self._upsert_stmt(table, values, keys))

    async def _link(
        self,
        s: AsyncSession | AsyncConnection,
        upstream: str,
        repository: str,
        items: list[tuple[str, str]],
        now: float,
    ) -> None:
        if not items:
            return
        rows = [
            dict(upstream=upstream, repository=repository, digest=d, kind=k, linked_at=now)
            for d, k in dict(items).items()
        ]
        await s.execute(self._ignore(RepositoryLink), rows)
