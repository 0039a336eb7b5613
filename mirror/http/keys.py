"""Typed application keys."""

from __future__ import annotations

from aiohttp import web

from mirror.config import Settings
from mirror.registry.service import Registry

SETTINGS = web.AppKey("settings", Settings)
REGISTRY = web.AppKey("registry", Registry)
