"""Fixtures for the mirror under test: in-process (API tests) and as a process (clients)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from mirror.config import Settings
from mirror.http.app import create_app
from tests.support.catalog import Pushed, push_standard_images
from tests.support.mirror import MirrorProcess
from tests.support.registry import Registry

MirrorFactory = Callable[..., MirrorProcess]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def mirror_factory(tmp_path: Path, proxy_factory: Any) -> Iterator[MirrorFactory]:
    """``make(upstreams, **settings) -> MirrorProcess``, started; stopped at teardown.

    It depends on ``proxy_factory`` so that mirrors stop before the test's proxies: a
    proxy then never shuts down under a live mirror's connections (read-ahead and retries
    may still be talking to it)."""

    made: list[MirrorProcess] = []
    counter = itertools.count()

    def make(upstreams: list[dict[str, Any]], **settings: Any) -> MirrorProcess:
        proc = MirrorProcess(tmp_path / f"mirror-{next(counter)}", upstreams, **settings)
        made.append(proc)
        return proc.start()

    yield make
    for proc in made:
        proc.stop()


def in_process_settings(data_dir: Path, upstreams: list[dict[str, Any]], **extra: Any) -> Settings:
    """Settings for an in-process mirror over ``data_dir``."""
    return Settings.model_validate(
        {"listen": "127.0.0.1:1", "data_dir": str(data_dir), **extra, "upstreams": upstreams}
    )


@pytest.fixture
async def mirror_client(
    proxy_factory: Any,
    aiohttp_client: Callable[..., Awaitable[TestClient[Any, Any]]],
    tmp_path: Path,
) -> AsyncIterator[ClientFactory]:
    """``await make(upstreams, **settings) -> TestClient`` of an in-process mirror.

    The client's ``.app["settings"]``-free handle on the data dir is ``client.data_dir``.
    ``proxy_factory`` comes first so that its proxies are set up before, and stopped
    after, the mirrors (``aiohttp_client`` closes them): read-ahead and retries may still
    be talking to a proxy when a test ends.
    """

    counter = itertools.count()

    async def make(upstreams: list[dict[str, Any]], **extra: Any) -> TestClient[Any, Any]:
        data_dir = tmp_path / f"mirror-data-{next(counter)}"
        settings = in_process_settings(data_dir, upstreams, **extra)
        client = await aiohttp_client(create_app(settings))
        client.data_dir = data_dir  # type: ignore[attr-defined]
        return client

    yield make


@pytest.fixture(scope="session")
def pushed(registry_session: Registry) -> Pushed:
    """The standard images, pushed once into the shared plain registry."""
    registry_session.start()
    return push_standard_images(registry_session.url)
