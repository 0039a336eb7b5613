"""Registry: builds and owns everything the HTTP layer calls, for one settings object."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from mirror.config import Settings
from mirror.db.session import create_engine, upgrade
from mirror.db.store import MetadataStore
from mirror.policy import Router
from mirror.reference import parse_digest
from mirror.registry.blobs import ProxyBlobs
from mirror.registry.common import ManifestMemory, Services
from mirror.registry.inflight import InflightFetches
from mirror.registry.manifests import ProxyManifests
from mirror.registry.tags import Catalog, ProxyReferrers, ProxyTags
from mirror.storage.blobs import BlobStore
from mirror.upstream.client import UpstreamRegistry, new_session

log = logging.getLogger("mirror.registry")

#: How often counted hits are written to the database.
ACCESS_FLUSH_SECONDS = 5.0


class Registry:
    """The proxy services over one data dir, database and set of upstreams."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.router = Router(services.settings)
        self.manifests = ProxyManifests(services)
        self.blobs = ProxyBlobs(services)
        self.tags = ProxyTags(services)
        self.catalog = Catalog(services)
        self.referrers = ProxyReferrers(services)


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
async def open_registry(settings: Settings) -> AsyncIterator[Registry]:
    """Prepare storage and schema, reconcile, and run the registry until exit."""
    store = BlobStore(settings.data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store.prepare()
    engine = create_engine(settings.db_url)
    sessions = {u.registry: new_session(u) for u in settings.upstreams}
    inflight = InflightFetches(store)
    flusher: asyncio.Task[None] | None = None
    meta = MetadataStore(engine)
    try:
        await upgrade(engine)
        await reconcile(store, meta)
        upstreams = {
            u.registry: UpstreamRegistry(u, sessions[u.registry]) for u in settings.upstreams
        }
        services = Services(settings, store, meta, upstreams, inflight, ManifestMemory())
        flusher = asyncio.create_task(_flush_forever(meta), name="access-flush")
        yield Registry(services)
    finally:
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await inflight.close()
        with contextlib.suppress(Exception):
            await meta.flush_access()
        for session in sessions.values():
            await session.close()
        await engine.dispose()


async def _flush_forever(meta: MetadataStore) -> None:
    while True:
        await asyncio.sleep(ACCESS_FLUSH_SECONDS)
        try:
            await meta.flush_access()
        except Exception:
            log.exception("event=access_flush_failed")
