"""Synthesized manifest lists: their specification, checked when the config loads.

A list is named ``[registry/]repo:tag`` (no registry: the default upstream's namespace)
and built from ``sources``, each ``[registry/]repo(:tag|@digest)`` of any configured
upstream, with an optional platform override (``docker manifest annotate``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mirror import errors
from mirror.platforms import Platform, parse_platform
from mirror.reference import ImageRef, parse_image_ref

if TYPE_CHECKING:
    from mirror.config import Settings


@dataclass(frozen=True)
class SourceSpec:
    """One source of a list: where it lives, and the platform it is declared to be."""

    key: str  # how the config names it, for error messages: lists[0].sources[1]
    registry: str
    repository: str
    reference: str
    platform: Platform | None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.reference}".replace(":sha256:", "@sha256:")


@dataclass(frozen=True)
class ListSpec:
    """A list to synthesize, with its name resolved to an upstream namespace."""

    key: str  # lists[0]
    registry: str
    repository: str
    tag: str
    sources: tuple[SourceSpec, ...]

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


def resolve_ref(settings: Settings, ref: ImageRef, key: str) -> tuple[str, str]:
    """(registry, repository at that upstream) of a user-written reference."""
    if ref.registry is None:
        default = settings.default_upstream
        if default is None:
            raise ValueError(f"{key}: {ref} names no registry and no upstream is the default")
        upstream = default
    else:
        found = settings.upstream(ref.registry)
        if found is None:
            configured = ", ".join(u.registry for u in settings.upstreams)
            raise ValueError(
                f"{key}: registry {ref.registry!r} of {ref} is not configured ({configured})"
            )
        upstream = found
    repository = ref.repository
    if upstream.is_docker_hub and "/" not in repository:
        repository = f"library/{repository}"
    return upstream.registry, repository


def _parse(text: str, key: str) -> ImageRef:
    try:
        return parse_image_ref(text)
    except errors.MirrorError as exc:
        raise ValueError(f"{key}: {exc.message}") from exc


def list_spec(
    settings: Settings, key: str, name: str, sources: list[tuple[str, str | None]]
) -> ListSpec:
    """Resolve and check one list; ValueError names the offending key."""
    target = _parse(name, f"{key}.name")
    if target.digest or not target.tag:
        raise ValueError(f"{key}.name: a list is named by a tag, got {name!r}")
    registry, repository = resolve_ref(settings, target, f"{key}.name")
    specs: list[SourceSpec] = []
    seen: dict[str, str] = {}
    for i, (ref_text, platform_text) in enumerate(sources):
        skey = f"{key}.sources[{i}]"
        ref = _parse(ref_text, skey)
        src_registry, src_repo = resolve_ref(settings, ref, skey)
        platform = None
        if platform_text is not None:
            try:
                platform = parse_platform(platform_text)
            except ValueError as exc:
                raise ValueError(f"{skey}.platform: {exc}") from exc
            if str(platform) in seen:
                raise ValueError(
                    f"{skey}: platform {platform} is declared for {seen[str(platform)]} too"
                )
            seen[str(platform)] = f"{skey} ({ref_text})"
        specs.append(SourceSpec(skey, src_registry, src_repo, ref.reference, platform))
    return ListSpec(key, registry, repository, target.tag, tuple(specs))


def check_list_settings(settings: Settings) -> list[ListSpec]:
    """Every configured list, resolved; ValueError names the first bad key."""
    specs = [
        list_spec(settings, f"lists[{i}]", entry.name, [(s.ref, s.platform) for s in entry.sources])
        for i, entry in enumerate(settings.lists)
    ]
    seen: dict[str, str] = {}
    for spec in specs:
        if str(spec) in seen:
            raise ValueError(f"{spec.key}.name: {spec} is defined twice (also {seen[str(spec)]})")
        seen[str(spec)] = f"{spec.key}.name"
    return specs
