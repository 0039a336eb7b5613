"""ProxyBlobs: blobs by digest, local-first, one verified upstream fetch per digest.

Visibility rule: a cached blob is shared by every repository by digest, but it is
served under a repository's name only once that repository was seen to reference
it (a cached manifest of that repository lists it) or the upstream confirmed it
there (a GET or HEAD of the blob in that repository succeeded). Otherwise the
mirror asks the upstream first, so one repository's private layers never leak
through another's name.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from mirror import errors, stats
from mirror.policy import Route
from mirror.reference import Digest
from mirror.registry.common import Services
from mirror.registry.inflight import BlobFetch

log = logging.getLogger("mirror.blobs")


@dataclass(frozen=True)
class LocalBlob:
    """A verified blob file to send as it is (sendfile, Range)."""

    digest: Digest
    path: Path
    size: int
    body: bytes | None = None  # a small blob's bytes, when in memory


@dataclass(frozen=True)
class StreamingBlob:
    """A blob being downloaded: stream it as it grows (last bytes after verification)."""

    digest: Digest
    fetch: BlobFetch

    @property
    def size(self) -> int | None:
        return self.fetch.size


async def coalesced(stream: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's bytes, all that is buffered at once: fewer, larger pieces cost less
    per byte than the transport's 256 KiB reads handed over one by one (measured)."""
    while chunk := await stream.readany():
        yield chunk


class ProxyBlobs:
    """Blobs for a route: from disk, from a running download, or a new download."""

    def __init__(self, services: Services) -> None:
        self._s = services

    async def head(self, route: Route, digest: Digest) -> int | None:
        """The size of a blob (from cache, or the upstream's HEAD); never downloads."""
        fetch = self._s.inflight.get(digest)
        if fetch is not None and fetch.verified:  # downloaded (its commit may be pending)
            await self._may_join(route, fetch)
            stats.set_cache("hit")
            return fetch.size
        size = await self._cached_size(route, digest)
        if size is not None:
            stats.set_cache("hit")
            return size
        self._refuse_offline(route, digest)
        upstream_size = await self._s.upstream(route).head_blob(route.repository, digest)
        stats.set_cache("miss")
        return upstream_size

    async def get(
        self, route: Route, digest: Digest, *, whole: bool = False
    ) -> LocalBlob | StreamingBlob:
        """A blob to serve. ``whole``: wait for a download to finish (Range requests)."""
        fetch = self._s.inflight.get(digest)
        if fetch is None:
            size = await self._cached_size(route, digest)
            if size is not None:
                stats.set_cache("hit")
                self._s.meta.record_access("blob", str(digest))
                body = self._s.inflight.recent.get(str(digest))
                return LocalBlob(digest, self._s.store.path(digest), size, body)
            fetch = self._s.inflight.get(digest)  # it may have started meanwhile
        if fetch is None:
            source = await self._s.fetch_source(route, str(digest))
            self._refuse_offline(source, digest)
            # no await between this check and the start: one download per digest
            fetch = self._s.inflight.get(digest) or self._start(source, digest)
            if fetch.key != (source.registry, source.repository):
                await self._confirm(route, digest)  # joined another repository's download
            elif source is not route:
                await self._s.meta.link(route.registry, route.repository, str(digest), "blob")
            stats.set_cache("miss")
        else:
            await self._may_join(route, fetch)
            stats.set_cache("hit" if fetch.verified else "miss")

        await fetch.wait_started()
        if whole or fetch.done:
            await fetch.wait_done()
            return LocalBlob(digest, fetch.path, fetch.written, fetch.body)

        return StreamingBlob(digest, fetch)

    async def warm(self, route: Route, digest: Digest) -> bool:
        """Fetch a blob into the cache unless it is cached or downloading already, and
        wait until its bytes are verified (its commit to disk may still run); True if
        this call started the download (read-ahead)."""
        if self._s.inflight.get(digest) is not None:
            return False
        if await self._cached_size(route, digest) is not None:
            return False
        if self._s.inflight.get(digest) is not None:
            return False  # started meanwhile (by a client): not this call's
        found = await self.get(route, digest)
        if isinstance(found, LocalBlob):
            return False
        await found.fetch.wait_verified()
        return True

    async def _cached_size(self, route: Route, digest: Digest) -> int | None:
        """The size of a cached blob this repository may serve, else None."""
        key = str(digest)
        # The file first: a stat is cheaper than a DB query, and it is the truth.
        on_disk = await self._s.store.size(digest)
        size = await self._s.meta.blob_size(key) if on_disk is not None else None
        if size is None:
            if on_disk is None and self._s.meta.known_blob_size(key) is not None:
                # The file vanished (deleted by hand): forget the row, fetch again.
                log.warning("event=blob_file_missing digest=%s", key)
                await self._s.meta.forget([key])
            return None
        await self._confirm(route, digest)
        return size

    async def _may_join(self, route: Route, fetch: BlobFetch) -> None:
        """Make sure this repository may be served a download made for another one."""
        if fetch.key != (route.registry, route.repository):
            await self._confirm(route, fetch.digest)

    async def _confirm(self, route: Route, digest: Digest) -> None:
        """Make sure this repository may serve the blob: linked, via a list's source, or
        confirmed by the upstream's HEAD (then linked)."""
        origin = await self._s.origin(route, str(digest))
        if origin is route:
            return
        if origin is None:
            self._refuse_offline(route, digest)
            await self._s.upstream(route).head_blob(route.repository, digest)
        await self._s.meta.link(route.registry, route.repository, str(digest), "blob")

    def _refuse_offline(self, route: Route, digest: Digest) -> None:
        if self._s.upstream(route).offline:
            raise errors.MirrorError(
                errors.BLOB_UNKNOWN,
                f"the mirror is offline and has no blob {digest} of {route.name}",
                detail={"offline": True},
            )

    def _start(self, route: Route, digest: Digest) -> BlobFetch:
        upstream = self._s.upstream(route)
        meta = self._s.meta

        @asynccontextmanager
        async def source() -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
            async with upstream.open_blob(route.repository, digest) as resp:
                yield resp.content_length, coalesced(resp.content)

        async def on_commit(size: int) -> None:
            await meta.add_blob(str(digest), size, None, route.registry, route.repository)

        return self._s.inflight.start(digest, (route.registry, route.repository), source, on_commit)
