"""Per-request observations (cache outcome, upstream time) for the access log.

A context variable carries them from the HTTP middleware through the registry logic
and the upstream client without threading them through every call.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass
class RequestStats:
    """What one request did: cache outcome and time spent waiting on upstreams."""

    cache: str = "-"  # hit | miss | stale | revalidated | - (not cacheable)
    upstream_seconds: float = 0.0
    upstream: str = "-"


_current: contextvars.ContextVar[RequestStats | None] = contextvars.ContextVar(
    "mirror_request_stats", default=None
)


def begin() -> RequestStats:
    """Start collecting for the current request."""
    stats = RequestStats()
    _current.set(stats)
    return stats


def current() -> RequestStats:
    """The current request's stats (a throwaway object outside a request)."""
    return _current.get() or RequestStats()


def set_cache(outcome: str) -> None:
    """Record the cache outcome of the current request."""
    current().cache = outcome


def add_upstream_time(upstream: str, seconds: float) -> None:
    """Add time spent waiting for an upstream."""
    stats = current()
    stats.upstream_seconds += seconds
    stats.upstream = upstream
    if stats.cache == "-":
        stats.cache = "miss"  # it went upstream, whatever the outcome
