"""One access-log line per request: method, path, status, bytes, cache, upstream time."""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from mirror.http.middleware import STATS_KEY
from mirror.stats import RequestStats


class AccessLogger(AbstractAccessLogger):
    """key=value lines on the ``mirror.access`` logger."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        found = request.get(STATS_KEY)
        stats = found if isinstance(found, RequestStats) else RequestStats()
        self.logger.info(
            "event=request method=%s path=%s status=%d bytes=%d cache=%s upstream=%s "
            "upstream_ms=%.1f ms=%.1f remote=%s",
            request.method,
            request.path_qs,
            response.status,
            response.body_length,
            stats.cache,
            stats.upstream,
            stats.upstream_seconds * 1000,
            time * 1000,
            request.remote,
        )


def access_logger() -> logging.Logger:
    """The logger access lines go to."""
    return logging.getLogger("mirror.access")
