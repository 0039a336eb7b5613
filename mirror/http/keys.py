"""Typed application keys."""

from __future__ import annotations

from aiohttp import web

from mirror.config import Settings
from mirror.http.sendfile import ThreadedSendfile
from mirror.registry.service import Registry

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
#: local port -> view name, for views served on their own port
PORT_VIEWS = web.AppKey("port_views", dict[int, str])
#: whole cached files sent from threads
SENDER = web.AppKey("sender", ThreadedSendfile)
