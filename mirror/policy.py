"""Policy: which upstream a request goes to, and whether a cached tag is still fresh."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mirror import errors
from mirror.config import Settings, UpstreamSettings
from mirror.platforms import Platform, parse_platform
from mirror.reference import MAX_NAME_LENGTH, looks_like_registry, validate_name


@dataclass(frozen=True)
class View:
    """Which platforms a route shows: a filter of lists, or a pin to one platform."""

    name: str
    platforms: tuple[Platform, ...]
    pin: bool = False

    def allows(self, platform: Platform | None) -> bool:
        """Whether a manifest of this platform may be served through the view."""
        return platform is not None and any(p.matches(platform) for p in self.platforms)

    def describe(self) -> str:
        return ", ".join(str(p) for p in self.platforms)


@dataclass(frozen=True)
class Route:
    """Where a request's repository lives."""

    upstream: UpstreamSettings
    repository: str  # the name at the upstream (library/ added for Docker Hub)
    name: str  # the name as the client wrote it in the path
    via_ns: bool  # routed by ?ns= (answers carry OCI-Namespace)
    view: View | None = None

    @property
    def registry(self) -> str:
        return self.upstream.registry


class Router:
    """Routes by ?ns=, then by a registry path prefix, then to the default upstream.

    A registry that is not configured is refused: the mirror is never an open proxy.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._configured = ", ".join(u.registry for u in settings.upstreams)
        self.views = {
            v.name: View(v.name, tuple(parse_platform(p) for p in v.platforms), v.pin)
            for v in settings.views
        }
        self._upstream_views = {
            u.registry: View(
                f"{u.registry}/platforms", tuple(parse_platform(p) for p in u.platforms)
            )
            for u in settings.upstreams
            if u.platforms
        }

    def route(self, name: str, ns: str | None, view: View | None = None) -> Route:
        """Resolve a path name (and the ns query parameter) to an upstream repository.

        A first component naming a configured view selects it (unless ``view`` is
        already given by the port the request came in on); an upstream's own
        ``platforms`` filter applies when no view does.
        """
        if len(name) > MAX_NAME_LENGTH:
            validate_name(name)  # raises NAME_INVALID with the length
        written = name
        first, _, rest = name.partition("/")
        if view is None and rest and first in self.views:
            view, name = self.views[first], rest
        route = self._route(name, ns)
        view = view or self._upstream_views.get(route.registry)
        return Route(route.upstream, route.repository, written, route.via_ns, view)

    def for_repository(self, registry: str, repository: str) -> Route:
        """The route of an upstream repository named directly (lists, admin commands)."""
        upstream = self._lookup(registry)
        return Route(upstream, repository, f"{registry}/{repository}", False)

    def _route(self, name: str, ns: str | None) -> Route:
        if ns is not None:
            upstream = self._lookup(ns)
            repository, via_ns = name, True
        else:
            first, _, rest = name.partition("/")
            if rest and looks_like_registry(first):
                upstream, repository = self._lookup(first), rest
            else:
                default = self._settings.default_upstream
                if default is None:
                    raise errors.MirrorError(
                        errors.NAME_UNKNOWN,
                        f"no default upstream: name a registry with ?ns= or a path prefix "
                        f"(configured: {self._configured})",
                    )
                upstream, repository = default, name
            via_ns = False
        validate_name(repository)
        if upstream.is_docker_hub and "/" not in repository:
            repository = f"library/{repository}"
        return Route(upstream, repository, name, via_ns)

    def _lookup(self, registry: str) -> UpstreamSettings:
        upstream = self._settings.upstream(registry)
        if upstream is None:
            raise errors.MirrorError(
                errors.DENIED,
                f"registry {registry!r} is not mirrored here (configured: {self._configured})",
            )
        return upstream


def tag_is_fresh(checked_at: float, ttl: float, now: float | None = None) -> bool:
    """Whether a tag checked at ``checked_at`` may be served without asking the upstream."""
    return ((now if now is not None else time.time()) - checked_at) < ttl
