"""Tags: TTL, HEAD revalidation, moved tags, and serving stale when the upstream fails."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from mirror.http.keys import REGISTRY
from tests.support import images
from tests.support.mirror import upstream
from tests.support.proxy import FaultyProxy
from tests.test_api import ALL_ACCEPT, error_of


async def test_upstream_down_serves_cached_and_fails_fast_on_uncached(
    mirror_client: Any, registry_factory: Any
) -> None:
    reg = registry_factory()
    cached = images.build_image("linux/arm64", rng=70, layers=1, layer_size=8192)
    uncached = images.build_image("linux/arm64", rng=71, layers=1, layer_size=8192)
    images.push(reg.url, "team/app", "v1", cached)
    images.push(reg.url, "team/app", "v2", uncached)
    # tag_ttl 0: every tag request revalidates, so the failure path is taken at once
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", reg.url, default=True, tag_ttl="0s")]
    )
    resp = await mirror.get("/v2/team/app/manifests/v1", headers={"Accept": ALL_ACCEPT})
    assert resp.headers["X-Mirror-Cache"] == "ok"
    for blob in cached.blobs:
        assert (await mirror.get(f"/v2/team/app/blobs/{blob.digest}")).status == 200
    reg.stop()

    resp = await mirror.get("/v2/team/app/manifests/v1", headers={"Accept": ALL_ACCEPT})
    assert resp.status == 200
    assert await resp.read() == cached.manifest
    assert resp.headers["X-Mirror-Cache"] == "stale"
    assert "Stale" in resp.headers["Warning"]
    for blob in cached.blobs:
        resp = await mirror.get(f"/v2/team/app/blobs/{blob.digest}")
        assert await resp.read() == blob.data
    resp = await mirror.get(f"/v2/team/app/manifests/{cached.manifest_digest}")
    assert await resp.read() == cached.manifest
    resp = await mirror.get("/v2/team/app/tags/list")
    assert (await resp.json())["tags"] == ["v1"]
    assert resp.headers["X-Mirror-Cache"] == "stale"

    for path, code in (
        ("/v2/team/app/manifests/v2", "UNAVAILABLE"),
        (f"/v2/team/app/blobs/{uncached.layers[0].digest}", "UNAVAILABLE"),
        (f"/v2/team/app/manifests/{uncached.manifest_digest}", "UNAVAILABLE"),
    ):
        resp = await mirror.get(path)
        assert resp.status == 503
        error = await error_of(resp)
        assert error["code"] == code and "unavailable" in error["message"]


async def test_upstream_5xx_serves_stale_with_log(
    mirror_factory: Any, registry_factory: Any, proxy_factory: Any
) -> None:
    reg = registry_factory()
    image = images.build_image("linux/amd64", rng=72, layers=1, layer_size=1024)
    images.push(reg.url, "team/app", "v1", image)
    proxy: FaultyProxy = proxy_factory(reg)
    proc = mirror_factory([upstream("docker.io", proxy.url, default=True, tag_ttl="0s")])

    async with aiohttp.ClientSession() as session:
        url = f"{proc.url}/v2/team/app/manifests/v1"
        async with session.get(url) as resp:
            assert resp.status == 200
        proxy.fail_status = 503
        async with session.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == image.manifest
            assert resp.headers["X-Mirror-Cache"] == "stale"
    log = proc.wait_log("cache=stale")
    assert "event=serve_stale upstream=docker.io repo=team/app tag=v1" in log
    assert "reason='HTTP 503'" in log


async def test_tag_ttl_then_head_revalidation_then_moved(
    mirror_client: Any, registry_factory: Any
) -> None:
    reg = registry_factory()
    first = images.build_image("linux/amd64", rng=73, layers=1, layer_size=1024)
    second = images.build_image("linux/amd64", rng=74, layers=1, layer_size=1024)
    images.push(reg.url, "team/app", "latest", first)
    ttl = 1.0
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", reg.url, default=True, tag_ttl=f"{ttl}s")]
    )
    path = "/v2/team/app/manifests/latest"
    resp = await mirror.get(path)
    fetched_at = time.monotonic()
    assert resp.headers["Docker-Content-Digest"] == first.manifest_digest
    reg.reset_counts()

    # within the TTL: answered from the cache, the upstream is not asked
    images.push(reg.url, "team/app", "latest", second)
    reg.reset_counts()
    resp = await mirror.get(path)
    if time.monotonic() - fetched_at < ttl:
        assert resp.headers["Docker-Content-Digest"] == first.manifest_digest
        assert reg.count("HEAD", "/manifests/") + reg.count("GET", "/manifests/") == 0

    # after the TTL: a HEAD finds the tag moved, one GET fetches the new manifest
    await asyncio.sleep(max(0.0, ttl - (time.monotonic() - fetched_at)) + 0.05)
    resp = await mirror.get(path)
    assert resp.headers["Docker-Content-Digest"] == second.manifest_digest
    assert await resp.read() == second.manifest
    assert reg.count("HEAD", "/v2/team/app/manifests/latest") == 1
    assert reg.count("GET", "/v2/team/app/manifests/latest") == 1

    # after the TTL again, unchanged: one HEAD, no GET (Docker Hub counts only GETs)
    reg.reset_counts()
    await asyncio.sleep(ttl + 0.05)
    resp = await mirror.get(path)
    assert resp.headers["Docker-Content-Digest"] == second.manifest_digest
    assert reg.count("HEAD", "/manifests/") == 1
    assert reg.count("GET", "/manifests/") == 0


async def mirror_over_image(
    mirror_client: Any, registry_factory: Any, rng: int
) -> tuple[Any, images.Image, TestClient[Any, Any]]:
    """A registry holding one image as team/app:v1, and an in-process mirror over it."""
    reg = registry_factory()
    image = images.build_image("linux/arm64", rng=rng, layers=1, layer_size=1024)
    images.push(reg.url, "team/app", "v1", image)
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", reg.url, default=True)]
    )
    return reg, image, mirror


async def test_concurrent_tag_requests_share_one_upstream_request(
    mirror_client: Any, registry_factory: Any
) -> None:
    reg, image, mirror = await mirror_over_image(mirror_client, registry_factory, rng=75)
    reg.reset_counts()
    responses = await asyncio.gather(*(mirror.get("/v2/team/app/manifests/v1") for _ in range(16)))
    for resp in responses:
        assert await resp.read() == image.manifest
    assert reg.count("GET", "/v2/team/app/manifests/v1") == 1


def _hold_first_lookup(
    monkeypatch: Any, obj: Any, name: str, key: str
) -> tuple[asyncio.Event, asyncio.Event]:
    """Returns (started, release): the first look-up of ``key`` by ``obj.name`` sets
    ``started`` and answers what it read only once ``release`` is set. That forces the
    interleaving where a request looks the cache up, another request's flight fetches and
    stores the manifest and ends, and only then does the first request go on to join a
    flight (the race CI once hit, now forced every run)."""
    real = getattr(obj, name)
    started, release = asyncio.Event(), asyncio.Event()
    held = False

    async def lookup(*args: Any) -> Any:
        nonlocal held
        answer = await real(*args)
        if key in args and not held:
            held = True
            started.set()
            await release.wait()
        return answer

    monkeypatch.setattr(obj, name, lookup)
    return started, release


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_a_flight_that_ended_during_a_lookup_is_not_repeated(
    mirror_client: Any, registry_factory: Any, monkeypatch: Any, by: str
) -> None:
    reg, image, mirror = await mirror_over_image(mirror_client, registry_factory, rng=76)
    reference = "v1" if by == "tag" else image.manifest_digest
    meta = mirror.app[REGISTRY].services.meta
    started, release = _hold_first_lookup(
        monkeypatch, meta, "tag" if by == "tag" else "manifest", reference
    )
    reg.reset_counts()
    path = f"/v2/team/app/manifests/{reference}"
    first = asyncio.create_task(mirror.get(path))
    await asyncio.wait_for(started.wait(), 10)
    second = await mirror.get(path)  # fetches, stores and ends its flight
    assert await second.read() == image.manifest
    release.set()
    resp = await first
    assert resp.status == 200
    assert await resp.read() == image.manifest
    assert reg.count("GET", f"/v2/team/app/manifests/{reference}") == 1
