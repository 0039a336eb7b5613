"""Synthesized lists: server-side `docker manifest create`, rebuilt when a source moves.

Each source contributes its manifest (platform from its config unless overridden) or,
if it is a list itself, all its entries (`--amend`). The media type follows the sources
(a Docker manifest list when all are Docker schema2, an OCI index otherwise), and the
bytes are canonical JSON, so the digest is the same on every machine and restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from mirror import errors, manifest
from mirror.config import Settings
from mirror.lists import ListSpec, SourceSpec, check_list_settings, list_spec
from mirror.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    LIST_TYPES,
    MANIFEST_TYPES,
    OCI_INDEX,
)
from mirror.platforms import Platform, from_json
from mirror.policy import Route, Router
from mirror.registry.common import Services
from mirror.registry.manifests import Manifest, ProxyManifests
from mirror.registry.platforms import PlatformIndex

log = logging.getLogger("mirror.lists")


class ListBuildError(errors.MirrorError):
    """A list cannot be built: a source is unknown, or two give one platform."""

    def __init__(self, key: str, message: str, status: int = 409) -> None:
        super().__init__(errors.MANIFEST_INVALID, f"{key}: {message}", status=status)
        self.key = key


@dataclass
class _Built:
    manifest: Manifest
    built_at: float
    platforms: list[str]


class SynthesizedLists:
    """The configured and stored lists, built on demand and kept for the sources' TTL."""

    def __init__(
        self,
        services: Services,
        router: Router,
        manifests: ProxyManifests,
        platforms: PlatformIndex,
    ) -> None:
        self._s = services
        self._router = router
        self._manifests = manifests
        self._platforms = platforms
        self._config_specs = check_list_settings(services.settings)
        self._specs: dict[tuple[str, str, str], ListSpec] = {}
        self._built: dict[tuple[str, str, str], _Built] = {}
        self._locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._install(self._config_specs)

    def _install(self, specs: list[ListSpec]) -> None:
        self._specs = {(s.registry, s.repository, s.tag): s for s in specs}
        aliases: dict[tuple[str, str], list[Route]] = {}
        for spec in specs:
            routes = aliases.setdefault((spec.registry, spec.repository), [])
            for source in spec.sources:
                route = self._router.for_repository(source.registry, source.repository)
                if all(
                    r.repository != route.repository or r.registry != route.registry for r in routes
                ):
                    routes.append(route)
        self._s.aliases.clear()
        self._s.aliases.update(aliases)

    async def refresh(self) -> None:
        """Pick up lists created with `mirror list create` (config lists always stay)."""
        specs = list(self._config_specs)
        taken = {(s.registry, s.repository, s.tag) for s in specs}
        for registry, repository, tag, sources_json in await self._s.meta.lists():
            if (registry, repository, tag) in taken:
                continue
            try:
                spec = stored_spec(self._s.settings, registry, repository, tag, sources_json)
            except ValueError as exc:
                log.warning(
                    "event=stored_list_invalid list=%s/%s:%s error=%r",
                    registry,
                    repository,
                    tag,
                    str(exc),
                )
                continue
            specs.append(spec)
        self._install(specs)

    def lookup(self, route: Route, tag: str) -> ListSpec | None:
        """The list served at a route's tag, if one is defined there."""
        return self._specs.get((route.registry, route.repository, tag))

    def specs(self) -> list[ListSpec]:
        """Every list currently defined."""
        return list(self._specs.values())

    async def get(self, spec: ListSpec) -> Manifest:
        """The list, rebuilt once the shortest source TTL has passed."""
        key = (spec.registry, spec.repository, spec.tag)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            built = self._built.get(key)
            if built is not None and time.time() - built.built_at < self._ttl(spec):
                return built.manifest
            built = await self._build(spec, previous=built)
            self._built[key] = built
            return built.manifest

    def _ttl(self, spec: ListSpec) -> float:
        return min(self._upstream_ttl(s) for s in spec.sources)

    def _upstream_ttl(self, source: SourceSpec) -> float:
        upstream = self._s.settings.upstream(source.registry)
        return upstream.tag_ttl if upstream else 0.0

    async def _build(self, spec: ListSpec, previous: _Built | None) -> _Built:
        entries: list[tuple[dict[str, Any], Platform, SourceSpec]] = []
        for source in spec.sources:
            entries += await self._entries_of(source)
        seen: dict[str, SourceSpec] = {}
        for _, platform, source in entries:
            if str(platform) in seen and seen[str(platform)] is not source:
                other = seen[str(platform)]
                raise ListBuildError(
                    source.key,
                    f"{source} and {other.key} ({other}) both give platform {platform}",
                )
            seen[str(platform)] = source
        all_docker = all(e.get("mediaType") == DOCKER_MANIFEST for e, _, _ in entries)
        media_type = DOCKER_MANIFEST_LIST if all_docker else OCI_INDEX
        body = manifest.canonical(
            {"schemaVersion": 2, "mediaType": media_type, "manifests": [e for e, _, _ in entries]}
        )
        target = self._router.for_repository(spec.registry, spec.repository)
        built = await self._manifests.store_derived(target, body, media_type)
        platforms = [str(p) for _, p, _ in entries]
        if previous is None or previous.manifest.digest != built.digest:
            log.info(
                "event=list_built list=%s digest=%s media_type=%s platforms=%s previous=%s",
                spec,
                built.digest,
                media_type,
                ",".join(platforms),
                previous.manifest.digest if previous else "-",
            )
        return _Built(built, time.time(), platforms)

    async def _entries_of(
        self, source: SourceSpec
    ) -> list[tuple[dict[str, Any], Platform, SourceSpec]]:
        route = self._router.for_repository(source.registry, source.repository)
        try:
            found = await self._manifests.get(route, source.reference, MANIFEST_TYPES)
        except errors.MirrorError as exc:
            if exc.status == 404:
                raise ListBuildError(source.key, f"{source} not found upstream", 404) from exc
            raise
        if found.media_type in LIST_TYPES:
            if source.platform is not None:
                raise ListBuildError(
                    source.key, f"{source} is a list: a platform override needs one image"
                )
            out = []
            for entry in manifest.entries(found.body):
                platform = from_json(entry.get("platform"))
                if platform is not None:
                    out.append((entry, platform, source))
            return out
        platform = source.platform or await self._platforms.platform_of(route, found)
        if platform is None:
            raise ListBuildError(
                source.key, f"cannot tell the platform of {source}: give it a platform"
            )
        entry = {
            "mediaType": found.media_type,
            "digest": found.digest,
            "size": len(found.body),
            "platform": platform.to_json(),
        }
        return [(entry, platform, source)]


def stored_spec(
    settings: Settings, registry: str, repository: str, tag: str, sources_json: str
) -> ListSpec:
    """A list stored by `mirror list create`, resolved like a config one."""
    sources = [(s["ref"], s.get("platform")) for s in json.loads(sources_json)]
    return list_spec(
        settings, f"list {registry}/{repository}:{tag}", f"{registry}/{repository}:{tag}", sources
    )
