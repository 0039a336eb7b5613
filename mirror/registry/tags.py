"""Tag lists, the catalog of cached repositories, and referrers."""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

from mirror import errors, manifest, stats
from mirror.mediatypes import OCI_INDEX
from mirror.policy import Route, tag_is_fresh
from mirror.reference import Digest, parse_digest
from mirror.registry.common import Services

log = logging.getLogger("mirror.tags")


@dataclass(frozen=True)
class Page:
    """One page of names, and the last one if more follow (for the Link header)."""

    items: list[str]
    next_last: str | None
    stale: bool = False


def paginate(names: list[str], n: int | None, last: str | None) -> Page:
    """The page of sorted ``names`` after ``last``, at most ``n`` long."""
    start = bisect.bisect_right(names, last) if last else 0
    rest = names[start:]
    if n is None or len(rest) <= n:
        return Page(rest, None)
    page = rest[:n]
    return Page(page, page[-1] if page else None)


class ProxyTags:
    """Tag lists relayed from the upstream; the known tags when it is down."""

    def __init__(self, services: Services) -> None:
        self._s = services

    async def list(self, route: Route, n: int | None, last: str | None) -> Page:
        """A page of the repository's tags."""
        try:
            tags, more = await self._s.upstream(route).get_tags(route.repository, n, last)
        except errors.UpstreamUnavailable as exc:
            known = await self._s.meta.tags(route.registry, route.repository)
            if not known:
                raise
            log.warning(
                "event=serve_stale upstream=%s repo=%s what=tags reason=%r",
                route.registry,
                route.repository,
                exc.reason,
            )
            stats.set_cache("stale")
            page = paginate(known, n, last)
            return Page(page.items, page.next_last, stale=True)
        stats.set_cache("miss")
        tags = sorted(tags)  # the spec's lexical order; distribution 2.8 does not sort
        if (n is not None and len(tags) > n) or (last and tags and tags[0] <= last):
            # The upstream ignored n/last (distribution 2.8 does): paginate here.
            return paginate(tags, n, last)
        next_last = tags[-1] if more and tags else None
        return Page(tags, next_last)


class Catalog:
    """The repositories with cached content, as clients would name them."""

    def __init__(self, services: Services) -> None:
        self._s = services

    async def list(self, ns: str | None, n: int | None, last: str | None) -> Page:
        """A page of cached repository names (prefixed with their registry off default)."""
        settings = self._s.settings
        if ns is not None and settings.upstream(ns) is None:
            raise errors.MirrorError(errors.DENIED, f"registry {ns!r} is not mirrored here")
        default = settings.default_upstream
        names = []
        for registry, repo in await self._s.meta.repositories():
            if ns is not None:
                if registry == ns.lower():
                    names.append(repo)
            elif default is not None and registry == default.registry:
                names.append(repo)
            else:
                names.append(f"{registry}/{repo}")
        return paginate(sorted(set(names)), n, last)


class ProxyReferrers:
    """The referrers API, relayed from the upstream and cached like a tag.

    An upstream without the API (distribution 2.8) is asked with the spec's
    fallback tag schema, ``<alg>-<hex>``; an unknown subject has no referrers.
    """

    def __init__(self, services: Services) -> None:
        self._s = services

    async def get(self, route: Route, subject: Digest, artifact_type: str | None) -> bytes:
        """The referrers index of ``subject`` (filtered by ``artifact_type`` if given)."""
        key = (route.registry, route.repository, str(subject), artifact_type or "")
        entry = await self._s.meta.referrers(*key)
        if entry is not None and tag_is_fresh(entry.checked_at, route.upstream.tag_ttl):
            body = await self._s.store.read_bytes(parse_digest(entry.digest))
            if body is not None:
                stats.set_cache("hit")
                return body
        try:
            body = await self._fetch(route, subject, artifact_type)
        except errors.UpstreamUnavailable as exc:
            cached = await self._s.store.read_bytes(parse_digest(entry.digest)) if entry else None
            if cached is None:
                raise
            log.warning(
                "event=serve_stale upstream=%s repo=%s what=referrers subject=%s reason=%r",
                route.registry,
                route.repository,
                subject,
                exc.reason,
            )
            stats.set_cache("stale")
            return cached
        digest = Digest.of(body)
        await self._s.store.put_bytes(digest, body)
        await self._s.meta.put_referrers(*key, str(digest))
        stats.set_cache("miss")
        return body

    async def _fetch(self, route: Route, subject: Digest, artifact_type: str | None) -> bytes:
        upstream = self._s.upstream(route)
        limit = self._s.settings.max_manifest_size
        answer = await upstream.get_referrers(route.repository, subject, artifact_type, limit)
        if answer is not None:
            body, filtered = answer
        else:
            fallback_tag = f"{subject.algorithm}-{subject.hex}"
            try:
                fetched = await upstream.get_manifest(
                    route.repository, fallback_tag, (OCI_INDEX,), limit
                )
                body, filtered = fetched.body, False
            except errors.MirrorError as exc:
                if exc.status != 404:
                    raise
                body, filtered = manifest.EMPTY_INDEX, False
        if artifact_type and not filtered:
            body = manifest.filter_referrers(body, artifact_type)
        return body
