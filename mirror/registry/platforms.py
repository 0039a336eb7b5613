"""Platforms of cached content, and per-platform views (filter and pin) of lists.

A filter view answers a tag with an index of only its platforms (canonical bytes, a
stable digest, annotations kept); a pin view answers with the single-platform manifest.
Nothing of an excluded platform is fetched or cached: its digests appear only inside
the original index, which requests by its own digest still get byte-exact.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import aiofiles

from mirror import errors, manifest
from mirror.mediatypes import LIST_TYPES, MANIFEST_TYPES
from mirror.platforms import Platform, from_json
from mirror.policy import Route, View
from mirror.reference import parse_digest
from mirror.registry.blobs import ProxyBlobs
from mirror.registry.common import Services
from mirror.registry.manifests import Manifest, ProxyManifests

log = logging.getLogger("mirror.platforms")

#: Docker's attestation entries point at the image they describe with this annotation.
_ATTESTS = "vnd.docker.reference.digest"


@dataclass(frozen=True)
class PlatformEntry:
    """One platform of an image, and how much of it is cached."""

    platform: Platform | None
    digest: str
    cached: str  # "complete" (manifest, config, layers), "partial", or "no"


class PlatformIndex:
    """What platform a manifest is, and which platforms of an image are cached."""

    def __init__(self, services: Services, manifests: ProxyManifests, blobs: ProxyBlobs) -> None:
        self._s = services
        self._manifests = manifests
        self._blobs = blobs

    async def platform_of(self, route: Route, found: Manifest) -> Platform | None:
        """An image manifest's platform: from an index that listed it, else its config."""
        known = (await self._s.meta.platforms([found.digest])).get(found.digest)
        if known is not None:
            return known
        doc = manifest.load(found.body) or {}
        config = doc.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            return None
        blob = await self._blobs.get(route, parse_digest(config["digest"]), whole=True)
        async with aiofiles.open(blob.path, "rb") as f:  # type: ignore[union-attr]
            raw = await f.read()
        try:
            platform = from_json(json.loads(raw))
        except ValueError:
            platform = None
        if platform is not None:
            await self._s.meta.put_platforms([(found.digest, platform, "config")])
        return platform

    async def inspect(self, route: Route, reference: str) -> tuple[Manifest, list[PlatformEntry]]:
        """A reference's manifest and, per platform, whether it is cached."""
        found = await self._manifests.get(route, reference, MANIFEST_TYPES)
        if found.media_type not in LIST_TYPES:
            platform = await self.platform_of(route, found)
            return found, [PlatformEntry(platform, found.digest, await self._cached(found.digest))]
        out = []
        for digest, platform in manifest.platforms_of_list(found.body, found.media_type):
            out.append(PlatformEntry(platform, digest, await self._cached(digest)))
        return found, out

    async def _cached(self, digest: str) -> str:
        body = await self._s.store.read_bytes(parse_digest(digest))
        if body is None:
            return "no"
        children = [d for d, kind in manifest.children(body, "") if kind == "blob"]
        for child in children:
            if await self._s.meta.blob_size(child) is None:
                return "partial"
        return "complete"


class PlatformViews:
    """Applies a route's view to the manifest a tag resolved to."""

    def __init__(self, services: Services, manifests: ProxyManifests, index: PlatformIndex) -> None:
        self._s = services
        self._manifests = manifests
        self._index = index
        self._derived: dict[tuple[str, str], Manifest] = {}

    async def apply(
        self, route: Route, view: View, found: Manifest, accept: tuple[str, ...]
    ) -> Manifest:
        """The manifest the view shows for a tag that resolved to ``found``."""
        if found.media_type not in LIST_TYPES:
            platform = await self._index.platform_of(route, found)
            if view.allows(platform):
                return found
            raise self._missing(route, view, [platform] if platform else [])
        listed = manifest.platforms_of_list(found.body, found.media_type)
        kept = [(d, p) for d, p in listed if view.allows(p)]
        if not kept:
            raise self._missing(route, view, [p for _, p in listed])
        if view.pin or not any(t in LIST_TYPES for t in accept):
            best = self._preferred(view, kept)
            return await self._manifests.by_digest(route, parse_digest(best))
        return await self._filtered(route, view, found, {d for d, _ in kept})

    async def check_digest(self, route: Route, view: View, digest: str) -> None:
        """Refuse a manifest by digest whose known platform the view excludes (checked
        before anything is fetched: an excluded platform is never pulled)."""
        platform = (await self._s.meta.platforms([digest])).get(digest)
        if platform is not None and not view.allows(platform):
            raise self._missing(route, view, [platform])

    @staticmethod
    def _preferred(view: View, kept: list[tuple[str, Platform]]) -> str:
        for wanted in view.platforms:  # the view's own order decides
            for digest, platform in kept:
                if wanted.matches(platform):
                    return digest
        return kept[0][0]

    async def subset(self, route: Route, found: Manifest, keep: set[str]) -> Manifest:
        """The index ``found`` keeping only the entries ``keep`` (and their attestations),
        as canonical bytes, cached under the route."""
        doc = manifest.load(found.body) or {}
        entries = [
            e
            for e in manifest.entries(found.body)
            if e.get("digest") in keep or (e.get("annotations") or {}).get(_ATTESTS) in keep
        ]
        body = manifest.canonical({**doc, "manifests": entries})
        return await self._manifests.store_derived(route, body, found.media_type)

    async def _filtered(
        self, route: Route, view: View, found: Manifest, keep: set[str]
    ) -> Manifest:
        memo_key = (found.digest, view.name)
        cached = self._derived.get(memo_key)
        if cached is not None:
            return cached
        derived = await self.subset(route, found, keep)

        log.info(
            "event=view_filtered view=%s repo=%s original=%s digest=%s platforms=%s",
            view.name,
            route.repository,
            found.digest,
            derived.digest,
            view.describe(),
        )
        self._derived[memo_key] = derived
        return derived

    @staticmethod
    def _missing(route: Route, view: View, available: list[Platform]) -> errors.MirrorError:
        names = ", ".join(sorted({str(p) for p in available})) or "none known"
        return errors.MirrorError(
            errors.MANIFEST_UNKNOWN,
            f"{route.name}: no manifest for {view.describe()} (view {view.name}); "
            f"the image has: {names}",
            detail={"view": view.name, "available": sorted({str(p) for p in available})},
        )
