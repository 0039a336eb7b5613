"""Pieces the proxy services share: the context they run in, single-flight."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mirror.config import Settings
from mirror.db.store import MetadataStore
from mirror.lru import LRU
from mirror.policy import Route
from mirror.registry.inflight import InflightFetches
from mirror.storage.blobs import BlobStore
from mirror.upstream.client import UpstreamRegistry

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Concurrent calls with one key share one execution, detached from any caller.

    A caller that goes away (client disconnect) does not cancel the work others wait on.
    """

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Task[T]] = {}

    async def run(self, key: Hashable, work: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(work())
            self._running[key] = task
            task.add_done_callback(lambda _t: self._running.pop(key, None))
        return await asyncio.shield(task)


@dataclass
class Services:
    """What the proxy services are built on: settings, store, metadata, upstreams."""

    settings: Settings
    store: BlobStore
    meta: MetadataStore
    upstreams: dict[str, UpstreamRegistry]
    inflight: InflightFetches
    memory: LRU[str, bytes]  # manifest bytes by digest

    #: (registry, repository) of a synthesized list -> the routes of its sources
    aliases: dict[tuple[str, str], list[Route]] = field(default_factory=dict)

    def upstream(self, route: Route) -> UpstreamRegistry:
        """The client of a route's upstream."""
        return self.upstreams[route.registry]

    async def fetch_source(self, route: Route, digest: str) -> Route:
        """Where to fetch uncached ``digest`` for ``route`` from: the route itself, or for a
        synthesized list's repository, the source that references it (no DB query for
        repositories that are not lists)."""
        if (route.registry, route.repository) not in self.aliases:
            return route
        return await self.origin(route, digest) or route

    async def origin(self, route: Route, digest: str) -> Route | None:
        """The route under which ``digest`` is known to live for ``route``'s repository.

        The route itself when linked there; for a synthesized list's repository, the
        source that references it; None when nobody has seen it (ask the upstream).
        """
        if await self.meta.is_linked(route.registry, route.repository, digest):
            return route
        for source in self.aliases.get((route.registry, route.repository), ()):
            if await self.meta.is_linked(source.registry, source.repository, digest):
                return source
        return None
