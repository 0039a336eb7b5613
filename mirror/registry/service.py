"""Registry: builds and owns everything the HTTP layer calls, for one settings object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from mirror import errors
from mirror.config import Settings
from mirror.db.memo import CachedMetadataStore
from mirror.db.session import create_engine, upgrade
from mirror.db.store import MetadataStore
from mirror.errors import ConfigError
from mirror.lru import LRU
from mirror.mediatypes import MANIFEST_TYPES
from mirror.policy import Route, Router
from mirror.reference import is_digest, parse_digest
from mirror.registry.blobs import ProxyBlobs
from mirror.registry.common import Services
from mirror.registry.inflight import InflightFetches
from mirror.registry.manifests import Manifest, ProxyManifests
from mirror.registry.platforms import PlatformIndex, PlatformViews
from mirror.registry.readahead import Readahead
from mirror.registry.synth import ListBuildError, SynthesizedLists
from mirror.registry.tags import Catalog, Page, ProxyReferrers, ProxyTags, paginate
from mirror.storage.blobs import BlobStore
from mirror.upstream.client import UpstreamRegistry, new_session

log = logging.getLogger("mirror.registry")

#: Bytes of manifests kept in memory in front of the disk.
MANIFEST_MEMORY = 32 * 1024 * 1024
#: How often counted hits are written to the database.
ACCESS_FLUSH_SECONDS = 5.0
#: How often lists created from the command line are picked up.
LISTS_REFRESH_SECONDS = 2.0


class ManifestService:
    """Manifests as clients see them: synthesized lists and views over the proxy."""

    def __init__(
        self,
        proxy: ProxyManifests,
        lists: SynthesizedLists,
        views: PlatformViews,
    ) -> None:
        self.proxy = proxy
        self._lists = lists
        self._views = views

    async def get(self, route: Route, reference: str, accept: tuple[str, ...]) -> Manifest:
        """The manifest for a tag or digest, through the route's list and view."""
        if is_digest(reference):
            if route.view is not None:
                await self._views.check_digest(route, route.view, reference)
            return await self.proxy.get(route, reference, accept)

        spec = self._lists.lookup(route, reference)
        wanted = MANIFEST_TYPES if route.view is not None else accept
        if spec is not None:
            found = await self._lists.get(spec)
        else:
            found = await self.proxy.get(route, reference, wanted)
        if route.view is not None:
            found = await self._views.apply(route, route.view, found, accept)
        return found


class TagService:
    """Tag lists: the upstream's, plus the tags of lists synthesized in the repository."""

    def __init__(self, proxy: ProxyTags, lists: SynthesizedLists) -> None:
        self._proxy = proxy
        self._lists = lists

    async def list(self, route: Route, n: int | None, last: str | None) -> Page:
        extra = [
            s.tag
            for s in self._lists.specs()
            if (s.registry, s.repository) == (route.registry, route.repository)
        ]
        if not extra:
            return await self._proxy.list(route, n, last)
        try:
            upstream = (await self._proxy.list(route, None, None)).items
        except errors.MirrorError as exc:
            if exc.status != 404:
                raise
            upstream = []
        return paginate(sorted(set(upstream) | set(extra)), n, last)


class Registry:
    """The proxy services over one data dir, database and set of upstreams."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.router = Router(services.settings)
        proxy = ProxyManifests(services)
        self.blobs = ProxyBlobs(services)
        self.readahead = Readahead(services, self.blobs)
        self.platforms = PlatformIndex(services, proxy, self.blobs)
        self.lists = SynthesizedLists(services, self.router, proxy, self.platforms)
        self.views = PlatformViews(services, proxy, self.platforms)
        self.manifests = ManifestService(proxy, self.lists, self.views)
        self.tags = TagService(ProxyTags(services), self.lists)
        self.catalog = Catalog(services)
        self.referrers = ProxyReferrers(services)

    async def check_lists(self) -> None:
        """Build every list once at start-up: a source the upstream does not know, or two
        sources of one platform, stop start-up; an unreachable upstream only warns."""
        for spec in self.lists.specs():
            try:
                await self.lists.get(spec)
            except ListBuildError as exc:
                raise ConfigError(f"invalid configuration: {exc.message}") from exc
            except errors.MirrorError as exc:
                log.warning("event=list_not_built list=%s reason=%r", spec, exc.message)


async def _warm_up(meta: MetadataStore) -> None:
    """Run the lookups every first pull makes once, with keys that match nothing: their
    SQL is compiled and a connection is open before the first client waits on them."""
    nothing = "sha256:" + "0" * 64
    await meta.tag("", "", "", "")
    await meta.manifest(nothing)
    await meta.blob_size(nothing)
    await meta.is_linked("", "", nothing)


async def reconcile(store: BlobStore, meta: MetadataStore) -> dict[str, int]:
    """Make the database and the disk agree after a crash (run before serving).

    Partial downloads are deleted; rows whose file is missing are dropped; a verified
    file with no row (a crash between rename and insert) is re-hashed and adopted.
    """
    loop = asyncio.get_running_loop()
    removed_tmp = await loop.run_in_executor(None, store.clean_temp)
    on_disk = dict(await loop.run_in_executor(None, store.scan))
    rows = await meta.all_blob_digests()
    missing = [d for d in rows if parse_digest(d) not in on_disk]
    if missing:
        await meta.forget(missing)
    adopted = dropped = 0
    for digest, size in on_disk.items():
        if str(digest) in rows:
            continue
        if await loop.run_in_executor(None, store.verify_file, digest):
            await meta.adopt(str(digest), size)
            adopted += 1
        else:
            await store.delete(digest)
            dropped += 1
    result = {
        "temp_removed": removed_tmp,
        "rows_dropped": len(missing),
        "files_adopted": adopted,
        "files_dropped": dropped,
    }
    log.info("event=reconciled %s", " ".join(f"{k}={v}" for k, v in result.items()))
    return result


@contextlib.asynccontextmanager
async def open_registry(
    settings: Settings, *, check_lists: bool = True, background: bool | None = None
) -> AsyncIterator[Registry]:
    """Prepare storage and schema, reconcile, and run the registry until exit.

    The daemon (``check_lists``) builds every list at start; with ``background``
    (the daemon's default) it also picks up stored lists and runs `[[sync]]` entries.
    Admin commands run with neither, beside a daemon or alone.
    """
    background = check_lists if background is None else background
    store = BlobStore(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store.prepare()
    engine = create_engine(settings.db_url)
    sessions = {u.registry: new_session(u) for u in settings.upstreams}
    inflight = InflightFetches(store)
    tasks: list[asyncio.Task[None]] = []
    meta = CachedMetadataStore(engine)
    registry: Registry | None = None
    try:
        await upgrade(engine)
        await reconcile(store, meta)
        await _warm_up(meta)
        upstreams = {
            u.registry: UpstreamRegistry(u, sessions[u.registry], offline=settings.offline)
            for u in settings.upstreams
        }

        services = Services(
            settings, store, meta, upstreams, inflight, LRU(MANIFEST_MEMORY, weigh=len)
        )
        registry = Registry(services)
        await registry.lists.refresh()
        if check_lists:
            await registry.check_lists()
        tasks.append(asyncio.create_task(_flush_forever(meta), name="access-flush"))
        if background:
            tasks.append(asyncio.create_task(_refresh_lists(registry), name="lists-refresh"))
            tasks += _start_sync(registry)
        yield registry
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if registry is not None:
            await registry.readahead.close()
        await inflight.close()
        await meta.drain()
        with contextlib.suppress(Exception):
            await meta.flush_access()
        for session in sessions.values():
            await session.close()
        await engine.dispose()


def _start_sync(registry: Registry) -> list[asyncio.Task[None]]:
    from mirror.prefetch import sync_forever

    settings = registry.services.settings
    if settings.sync and settings.offline:
        log.info("event=sync_skipped reason=offline entries=%d", len(settings.sync))
        return []
    return [
        asyncio.create_task(sync_forever(registry, i), name=f"sync-{i}")
        for i in range(len(settings.sync))
    ]


async def _refresh_lists(registry: Registry) -> None:

    while True:
        await asyncio.sleep(LISTS_REFRESH_SECONDS)
        try:
            await registry.lists.refresh()
        except Exception:
            log.exception("event=lists_refresh_failed")


async def _flush_forever(meta: MetadataStore) -> None:
    while True:
        await asyncio.sleep(ACCESS_FLUSH_SECONDS)
        try:
            await meta.flush_access()
        except Exception:
            log.exception("event=access_flush_failed")
