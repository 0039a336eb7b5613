"""The /v2/ routes."""

from __future__ import annotations

from aiohttp import web

from mirror.http import handlers


def add_routes(app: web.Application) -> None:
    """Register the registry API; everything under /v2/<name>/ goes through dispatch."""
    app.router.add_get("/v2/", handlers.base)
    app.router.add_get("/v2", handlers.base)
    app.router.add_get("/v2/_catalog", handlers.catalog)
    app.router.add_route("*", "/v2/{tail:.+}", handlers.dispatch)
