"""The upstream client's manners: redirects, timeouts, retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support import images
from tests.support.mirror import upstream
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry
from tests.test_api import error_of


async def test_blob_redirect_followed_without_leaking_authorization(
    mirror_client: Any,
) -> None:
    # docker-registry's filesystem storage never redirects, so both servers here are stubs
    # (a mock by necessity): a registry that demands Basic auth and redirects blob GETs to
    # a "blob storage" host, as registries in front of S3 or a CDN do.
    blob = b"layer bytes " * 1000
    digest = images.sha256_digest(blob)
    storage_seen: list[dict[str, str]] = []
    registry_seen: list[str | None] = []

    async def storage(request: web.Request) -> web.Response:
        storage_seen.append(dict(request.headers))
        return web.Response(body=blob, content_type="application/octet-stream")

    storage_app = web.Application()
    storage_app.router.add_get("/bucket/{digest}", storage)
    async with TestServer(storage_app, host="127.0.0.1") as storage_server:

        async def registry(request: web.Request) -> web.StreamResponse:
            registry_seen.append(request.headers.get("Authorization"))
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="test"'})
            location = storage_server.make_url(f"/bucket/{digest}?signature=abc")
            raise web.HTTPTemporaryRedirect(location=str(location))

        registry_app = web.Application()
        registry_app.router.add_get("/v2/{tail:.*}", registry)
        async with TestServer(registry_app, host="127.0.0.1") as registry_server:
            url = str(registry_server.make_url("")).rstrip("/")
            mirror: TestClient[Any, Any] = await mirror_client(
                [upstream("docker.io", url, default=True, username="u", password="pw")]
            )
            resp = await mirror.get(f"/v2/team/app/blobs/{digest}")
            assert resp.status == 200
            assert await resp.read() == blob
    assert registry_seen[0] is None and registry_seen[-1] is not None  # challenged, then Basic
    assert len(storage_seen) == 1
    assert "Authorization" not in storage_seen[0]


async def test_slow_upstream_times_out_and_stale_is_served(
    mirror_client: Any, registry_factory: Any, proxy_factory: Any
) -> None:
    reg: Registry = registry_factory()
    image = images.build_image("linux/amd64", rng=80, layers=1, layer_size=1024)
    images.push(reg.url, "team/app", "v1", image)
    proxy: FaultyProxy = proxy_factory(reg)
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", proxy.url, default=True, tag_ttl="0s", read_timeout="1s", retries=0)]
    )
    assert (await mirror.get("/v2/team/app/manifests/v1")).status == 200
    proxy.delay_seconds = 30.0  # the upstream hangs
    started = time.monotonic()
    resp = await mirror.get("/v2/team/app/manifests/v1")
    assert resp.status == 200 and resp.headers["X-Mirror-Cache"] == "stale"
    assert time.monotonic() - started < 20  # bounded by read_timeout, not by the hang
    resp = await mirror.get("/v2/team/app/manifests/v404")
    assert resp.status == 503
    assert "TimeoutError" in (await error_of(resp))["message"]


async def test_5xx_retried_with_backoff_then_reported(
    mirror_client: Any, registry: Registry, proxy_factory: Any
) -> None:
    proxy: FaultyProxy = proxy_factory(registry)
    proxy.fail_status = 500
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", proxy.url, default=True, retries=2)]
    )
    resp = await mirror.get("/v2/team/app/manifests/v1")
    assert resp.status == 503
    error = await error_of(resp)
    assert error["code"] == "UNAVAILABLE" and "HTTP 500" in error["message"]
    assert proxy.count("GET", "/v2/team/app/manifests/v1") == 3  # 1 + 2 retries


async def test_transient_5xx_absorbed_by_a_retry(
    mirror_client: Any, registry: Registry, pushed: Any, proxy_factory: Any
) -> None:
    proxy: FaultyProxy = proxy_factory(registry)
    proxy.fail_status = 503
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", proxy.url, default=True, retries=3)]
    )
    request = asyncio.ensure_future(mirror.get("/v2/team/single/manifests/v1"))
    # the proxy runs in another thread: poll its counter
    while proxy.count("GET", "/manifests/v1") == 0:  # noqa: ASYNC110 (first attempt failed)
        await asyncio.sleep(0.005)
    proxy.fail_status = None  # ...and the upstream recovers before the retry
    resp = await request
    assert resp.status == 200
    assert await resp.read() == pushed.single.manifest
    assert proxy.count("GET", "/manifests/v1") >= 2
