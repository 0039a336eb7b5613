"""What an image reference means in content: the manifests and blobs of chosen platforms.

Shared by `mirror prefetch` (fill the cache), `[[sync]]` (keep it fresh) and
`mirror export` (write a bundle). Resolution goes through the same proxy services
as the daemon: cached content is used, missing content is fetched and verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mirror import errors, manifest
from mirror.lists import resolve_ref
from mirror.mediatypes import LIST_TYPES, MANIFEST_TYPES
from mirror.platforms import Platform
from mirror.policy import Route
from mirror.reference import ImageRef, parse_digest, parse_image_ref
from mirror.registry.manifests import Manifest
from mirror.registry.service import Registry


@dataclass(frozen=True)
class BlobRef:
    """A blob an image needs: config or layer."""

    digest: str
    size: int
    media_type: str


@dataclass
class ImagePlan:
    """One reference resolved: its top manifest, the chosen images, their blobs."""

    name: str  # registry/repository:tag (or @digest), fully qualified
    ref: ImageRef
    registry: str
    repository: str
    route: Route
    top: Manifest
    images: list[tuple[Platform | None, Manifest]] = field(default_factory=list)
    blobs: list[BlobRef] = field(default_factory=list)
    filtered: Manifest | None = None  # an index of the chosen platforms, if a subset

    @property
    def platforms(self) -> list[str]:
        return [str(p) if p else "unknown" for p, _ in self.images]

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blobs)

    def manifests(self) -> list[Manifest]:
        """Every manifest of the plan (top, filtered index, images)."""
        out = [self.top] + ([self.filtered] if self.filtered else [])
        return out + [m for _, m in self.images]


def normalize_ref(registry: Registry, text: str) -> tuple[ImageRef, str, str]:
    """(ref, registry, repository at the upstream) for user input like `nginx`."""
    try:
        ref = parse_image_ref(text)
        upstream, repository = resolve_ref(registry.services.settings, ref, text)
    except errors.MirrorError as exc:
        raise ValueError(f"{text}: {exc.message}") from exc
    return ref, upstream, repository


async def plan(registry: Registry, text: str, platforms: list[Platform] | None = None) -> ImagePlan:
    """Resolve a reference to the content of the chosen platforms (all if None)."""
    ref, upstream, repository = normalize_ref(registry, text)
    route = registry.router.for_repository(upstream, repository)
    top = await registry.manifests.get(route, ref.reference, MANIFEST_TYPES)
    suffix = f"@{ref.digest}" if ref.digest else f":{ref.tag}"
    result = ImagePlan(f"{upstream}/{repository}{suffix}", ref, upstream, repository, route, top)
    if top.media_type in LIST_TYPES:
        listed = manifest.platforms_of_list(top.body, top.media_type)
        chosen = _choose(result.name, listed, platforms)
        for digest, platform in chosen:
            child = await registry.manifests.proxy.by_digest(route, parse_digest(digest))
            result.images.append((platform, child))
        if platforms:
            result.filtered = await registry.views.subset(route, top, {d for d, _ in chosen})
    else:
        single = await registry.platforms.platform_of(route, top)
        if platforms and (single is None or not any(p.matches(single) for p in platforms)):
            raise errors.MirrorError(
                errors.MANIFEST_UNKNOWN,
                f"{result.name} is {single or 'of unknown platform'}, "
                f"not {', '.join(str(p) for p in platforms)}",
            )
        result.images.append((single, top))

    result.blobs = _blobs(result.images)
    return result


def _choose(
    name: str, listed: list[tuple[str, Platform]], platforms: list[Platform] | None
) -> list[tuple[str, Platform]]:
    if not platforms:
        return listed
    chosen = [(d, p) for d, p in listed if any(want.matches(p) for want in platforms)]
    missing = [str(w) for w in platforms if not any(w.matches(p) for _, p in listed)]
    if missing:
        have = ", ".join(sorted({str(p) for _, p in listed})) or "none"
        raise errors.MirrorError(
            errors.MANIFEST_UNKNOWN, f"{name} has no {', '.join(missing)}; it has: {have}"
        )
    return chosen


def _blobs(images: list[tuple[Platform | None, Manifest]]) -> list[BlobRef]:
    seen: dict[str, BlobRef] = {}
    for _, image in images:
        doc = manifest.load(image.body) or {}
        descriptors: list[Any] = [doc.get("config"), *(doc.get("layers") or [])]
        for d in descriptors:
            if isinstance(d, dict) and isinstance(d.get("digest"), str):
                seen.setdefault(
                    d["digest"],
                    BlobRef(d["digest"], int(d.get("size") or 0), str(d.get("mediaType") or "")),
                )
    return list(seen.values())
