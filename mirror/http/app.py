"""create_app(settings): the aiohttp application, composed (not subclassed)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from mirror.config import Settings
from mirror.http.keys import PORT_VIEWS, REGISTRY, SENDER, SETTINGS
from mirror.http.middleware import errors_middleware
from mirror.http.routes import add_routes
from mirror.http.sendfile import ThreadedSendfile
from mirror.registry.service import open_registry


def create_app(settings: Settings) -> web.Application:
    """The mirror's web application; the registry opens and closes with it."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=1024 * 1024)
    app[SETTINGS] = settings
    app[PORT_VIEWS] = {int(v.listen.rpartition(":")[2]): v.name for v in settings.views if v.listen}
    add_routes(app)

    async def registry_ctx(app: web.Application) -> AsyncIterator[None]:
        async with open_registry(settings) as registry:
            app[REGISTRY] = registry
            app[SENDER] = sender = ThreadedSendfile()
            try:
                yield
            finally:
                await sender.close()

    app.cleanup_ctx.append(registry_ctx)
    return app
