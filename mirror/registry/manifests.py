"""ProxyManifests: manifests by digest (immutable, cached forever) and by tag (TTL).

Tags are served from the cache within the upstream's tag_ttl; after it, a HEAD
revalidates them and a GET follows only if the digest moved. When the upstream is
unreachable, times out, or answers 5xx/429, the last known digest is served stale.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mirror import errors, manifest, stats
from mirror.db.store import TagEntry
from mirror.mediatypes import MANIFEST_TYPES, accept_key
from mirror.policy import Route, tag_is_fresh
from mirror.reference import Digest, is_digest, parse_digest, validate_tag
from mirror.registry.common import Services, SingleFlight
from mirror.upstream.client import FetchedManifest

log = logging.getLogger("mirror.manifests")


@dataclass(frozen=True)
class Manifest:
    """A manifest to serve: exact bytes, type, digest, and whether it is stale."""

    body: bytes
    media_type: str
    digest: str
    stale: bool = False


class ProxyManifests:
    """Local-first manifests with upstream fill, per route."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._flight: SingleFlight[Manifest] = SingleFlight()

    async def get(self, route: Route, reference: str, accept: tuple[str, ...]) -> Manifest:
        """The manifest a client asked for by tag or digest."""
        if is_digest(reference):
            return await self.by_digest(route, parse_digest(reference))
        return await self._by_tag(route, validate_tag(reference), accept)

    async def by_digest(self, route: Route, digest: Digest) -> Manifest:
        """Immutable content: from cache when this repository is known to have it.

        For a synthesized list's repository, content its sources reference is fetched
        from (and linked under) the source that has it.
        """
        key = str(digest)
        origin = await self._s.origin(route, key)
        cached = await self._cached(key)
        if cached is not None:
            if origin is None:
                # Cached for another repository: confirm this one has it too.
                await self._s.upstream(route).head_manifest(route.repository, key, MANIFEST_TYPES)
            if origin is not route:
                await self._s.meta.link(route.registry, route.repository, key, "manifest")
            stats.set_cache("hit")
            self._s.meta.record_access("manifest", key)
            return cached
        source = origin or route
        if self._s.upstream(source).offline:
            raise await self.offline_error(route, f"manifest {key}", key)
        flight_key = ("digest", source.registry, source.repository, key)
        found = await self._flight.run(flight_key, lambda: self._fetch_digest(source, digest))
        if source is not route:
            await self._s.meta.link(route.registry, route.repository, key, "manifest")
        return found

    async def store_derived(self, route: Route, body: bytes, media_type: str) -> Manifest:
        """Cache a manifest the mirror made (a filtered or synthesized list) under a route."""
        digest = Digest.of(body)
        key = str(digest)
        if self._s.memory.get(key) is None or not await self._s.meta.is_linked(
            route.registry, route.repository, key
        ):
            await self._store(route, FetchedManifest(body, media_type, digest))
        return Manifest(body, media_type, key)

    async def _fetch_digest(self, route: Route, digest: Digest) -> Manifest:
        # Checked again inside the flight: a flight that ended between the caller's
        # look-up and its joining has already stored it (one upstream GET, not two).
        cached = await self._cached(str(digest))
        if cached is not None:
            stats.set_cache("hit")
            return cached
        fetched = await self._s.upstream(route).get_manifest(
            route.repository, str(digest), MANIFEST_TYPES, self._s.settings.max_manifest_size
        )
        if fetched.digest != digest:
            log.warning(
                "event=manifest_digest_mismatch upstream=%s repo=%s want=%s got=%s",
                route.registry,
                route.repository,
                digest,
                fetched.digest,
            )
            raise errors.BlobVerificationError(str(digest), f"upstream sent {fetched.digest}")
        stats.set_cache("miss")
        return await self._store(route, fetched)

    async def _by_tag(self, route: Route, tag: str, accept: tuple[str, ...]) -> Manifest:
        akey = accept_key(accept)
        offline = self._s.upstream(route).offline
        _, found = await self._fresh_tag(route, tag, akey, offline)
        if found is not None:
            return found
        if offline:
            raise await self.offline_error(route, f"tag {tag}")
        flight_key = ("tag", route.registry, route.repository, tag, akey)
        return await self._flight.run(flight_key, lambda: self._refresh_tag(route, tag, accept))

    async def _fresh_tag(
        self, route: Route, tag: str, akey: str, offline: bool
    ) -> tuple[TagEntry | None, Manifest | None]:
        """The tag's cache entry, and its manifest when it may be served without asking."""
        entry = await self._s.meta.tag(route.registry, route.repository, tag, akey)
        if entry is None and offline:
            # Offline (e.g. content imported from a bundle): any answer known for the tag.
            entry = await self._s.meta.any_tag(route.registry, route.repository, tag)
        if entry is not None and (
            offline or tag_is_fresh(entry.checked_at, route.upstream.tag_ttl)
        ):
            body = await self._load(entry.digest)
            if body is not None:
                stats.set_cache("hit")
                self._s.meta.record_access("manifest", entry.digest)
                return entry, Manifest(body, entry.media_type, entry.digest)
        return entry, None

    async def _refresh_tag(self, route: Route, tag: str, accept: tuple[str, ...]) -> Manifest:
        upstream = self._s.upstream(route)
        akey = accept_key(accept)
        # Looked up again inside the flight: a flight that ended between the caller's
        # look-up and its joining has already refreshed the tag (one upstream GET, not two).
        entry, found = await self._fresh_tag(route, tag, akey, offline=False)
        if found is not None:
            return found
        cached = await self._load(entry.digest) if entry else None
        try:
            if entry is not None and cached is not None:
                head = await upstream.head_manifest(route.repository, tag, accept)
                if head.digest is not None and str(head.digest) == entry.digest:
                    await self._s.meta.put_tag(
                        route.registry, route.repository, tag, akey, entry.digest, entry.media_type
                    )
                    stats.set_cache("revalidated")
                    return Manifest(cached, entry.media_type, entry.digest)
                log.info(
                    "event=tag_moved upstream=%s repo=%s tag=%s old=%s new=%s",
                    route.registry,
                    route.repository,
                    tag,
                    entry.digest,
                    head.digest,
                )
            fetched = await upstream.get_manifest(
                route.repository, tag, accept, self._s.settings.max_manifest_size
            )
        except errors.UpstreamUnavailable as exc:
            if entry is None or cached is None:
                raise
            log.warning(
                "event=serve_stale upstream=%s repo=%s tag=%s digest=%s reason=%r",
                route.registry,
                route.repository,
                tag,
                entry.digest,
                exc.reason,
            )
            stats.set_cache("stale")
            return Manifest(cached, entry.media_type, entry.digest, stale=True)
        stats.set_cache("miss")
        return await self._store(route, fetched, (tag, akey))

    async def _store(
        self, route: Route, fetched: FetchedManifest, tag: tuple[str, str] | None = None
    ) -> Manifest:
        """Commit the bytes (verified by digest) and their metadata (and the tag pointing
        at them), then serve them. File and rows are written at once; the bytes are in
        memory first, so a reader who sees the rows before the file still finds them."""
        key = str(fetched.digest)
        self._s.memory.put(key, fetched.body)
        await asyncio.gather(
            self._s.store.put_bytes(fetched.digest, fetched.body),
            self._s.meta.add_manifest(
                key,
                fetched.media_type,
                len(fetched.body),
                route.registry,
                route.repository,
                manifest.children(fetched.body, fetched.media_type),
                tag,
            ),
        )

        described = manifest.platforms_of_list(fetched.body, fetched.media_type)
        if described:
            await self._s.meta.put_platforms((d, p, "index") for d, p in described)
        log.info(
            "event=manifest_cached upstream=%s repo=%s digest=%s media_type=%s bytes=%d%s",
            route.registry,
            route.repository,
            key,
            fetched.media_type,
            len(fetched.body),
            " platforms=" + ",".join(str(p) for _, p in described) if described else "",
        )

        return Manifest(fetched.body, fetched.media_type, key)

    async def offline_error(
        self, route: Route, what: str, digest: str | None = None
    ) -> errors.MirrorError:
        """MANIFEST_UNKNOWN saying the mirror is offline, with the platforms it does have."""
        cached = [
            str(p) for p in await self._s.meta.cached_platforms(route.registry, route.repository)
        ]
        platform = (await self._s.meta.platforms([digest])).get(digest) if digest else None
        which = f" ({platform})" if platform else ""
        return errors.MirrorError(
            errors.MANIFEST_UNKNOWN,
            f"the mirror is offline and has no {what}{which} of {route.name}; "
            f"cached platforms: {', '.join(cached) or 'none'}",
            detail={"offline": True, "cached_platforms": cached},
        )

    async def _cached(self, digest: str) -> Manifest | None:
        """A cached manifest by digest (its row and its bytes), or None."""
        entry = await self._s.meta.manifest(digest)
        body = await self._load(digest) if entry is not None else None
        if entry is None or body is None:
            return None
        return Manifest(body, entry.media_type, digest)

    async def _load(self, digest: str) -> bytes | None:
        body = self._s.memory.get(digest)
        if body is None:
            body = await self._s.store.read_bytes(parse_digest(digest))
            if body is not None:
                self._s.memory.put(digest, body)
        return body
