"""Read-ahead: a GET of an image manifest starts the downloads of its blobs, against a
real docker-registry upstream; and the admission window that orders them."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from mirror.registry.readahead import Window
from tests.support import images
from tests.support.mirror import upstream
from tests.support.net import until
from tests.support.registry import Registry
from tests.test_api import ALL_ACCEPT

KiB = 1024
MiB = 1024 * KiB


def cached(mirror: TestClient[Any, Any], blob: images.Blob) -> bool:
    """The blob's verified file is in the mirror's store."""
    hex_digest = blob.digest.split(":", 1)[1]
    path = mirror.data_dir / "blobs" / "sha256" / hex_digest[:2] / hex_digest  # type: ignore[attr-defined]
    return bool(path.exists())


def pushed_image(registry: Registry, repo: str, seed: int, **build: Any) -> images.Image:
    image = images.build_image("linux/arm64", rng=seed, **build)
    images.push(registry.url, repo, "v1", image)
    return image


async def get_manifest(mirror: TestClient[Any, Any], repo: str, method: str = "GET") -> bytes:
    resp = await mirror.request(method, f"/v2/{repo}/manifests/v1", headers={"Accept": ALL_ACCEPT})
    assert resp.status == 200
    return await resp.read()


async def test_manifest_get_fetches_its_blobs_before_the_client_asks(
    mirror_client: Any, registry: Registry
) -> None:
    image = pushed_image(registry, "ahead/app", 4101, layers=3, layer_size=200 * KiB)
    registry.reset_counts()
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    assert await get_manifest(mirror, "ahead/app") == image.manifest
    # no blob asked for yet: the mirror fetches and verifies each one by itself
    await until(lambda: all(cached(mirror, b) for b in image.blobs), "blobs read ahead")
    assert [registry.count("GET", b.digest) for b in image.blobs] == [1] * len(image.blobs)
    # the client's own requests then come from disk: nothing reaches the upstream
    before = len(registry.requests())
    for blob in image.blobs:
        resp = await mirror.get(f"/v2/ahead/app/blobs/{blob.digest}")
        assert resp.status == 200 and await resp.read() == blob.data
        assert resp.headers["Docker-Content-Digest"] == blob.digest
    assert len(registry.requests()) == before


async def test_client_joins_the_read_ahead_download(mirror_client: Any, registry: Registry) -> None:
    image = pushed_image(registry, "ahead/big", 4102, layers=3, layer_size=3 * MiB)
    registry.reset_counts()
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    await get_manifest(mirror, "ahead/big")

    async def pull(blob: images.Blob) -> bytes:
        resp = await mirror.get(f"/v2/ahead/big/blobs/{blob.digest}")
        assert resp.status == 200
        return await resp.read()

    # asked at once, while read-ahead downloads run: every blob still comes down once
    got = await asyncio.gather(*(pull(b) for b in image.blobs))
    assert got == [b.data for b in image.blobs]
    assert [registry.count("GET", b.digest) for b in image.blobs] == [1] * len(image.blobs)


async def test_head_an_index_and_readahead_false_fetch_no_blob(
    mirror_client: Any, registry: Registry
) -> None:
    headed = pushed_image(registry, "ahead/headed", 4103, layers=2, layer_size=50 * KiB)
    arm = images.build_image("linux/arm64", rng=4104, layers=1, layer_size=50 * KiB)
    amd = images.build_image("linux/amd64", rng=4105, layers=1, layer_size=50 * KiB)
    images.push(registry.url, "ahead/multi", "v1", images.build_index([arm, amd]))
    control = pushed_image(registry, "ahead/control", 4106, layers=2, layer_size=50 * KiB)
    registry.reset_counts()
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    await get_manifest(mirror, "ahead/headed", "HEAD")  # a client checking for updates
    await get_manifest(mirror, "ahead/multi")  # an index: no platform chosen yet
    await get_manifest(mirror, "ahead/control")  # read ahead, queued after the others
    await until(lambda: all(cached(mirror, b) for b in control.blobs), "control read ahead")
    await asyncio.sleep(0.5)
    untouched = [*headed.blobs, *arm.blobs, *amd.blobs]
    assert [registry.count("GET", b.digest) for b in untouched] == [0] * len(untouched)
    assert registry.count("GET", arm.manifest_digest) == 0  # children of the index too

    off: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True, readahead=False)]
    )
    registry.reset_counts()
    await get_manifest(off, "ahead/control")
    first = control.layers[0]
    resp = await off.get(f"/v2/ahead/control/blobs/{first.digest}")
    assert await resp.read() == first.data
    await asyncio.sleep(0.5)
    others = [control.config, *control.layers[1:]]
    assert [registry.count("GET", b.digest) for b in others] == [0] * len(others)
    assert registry.count("GET", first.digest) == 1


async def test_small_blobs_served_from_memory_carry_the_same_headers(
    mirror_client: Any, registry: Registry
) -> None:
    # 100 KiB stays in memory after its download; 1 MiB is sent from its file
    small = pushed_image(registry, "ahead/mem", 4107, layers=1, layer_size=100 * KiB).layers[0]
    large = pushed_image(registry, "ahead/file", 4108, layers=1, layer_size=MiB).layers[0]
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True, readahead=False)]
    )
    shown: dict[str, aiohttp.ClientResponse] = {}
    for repo, blob in (("ahead/mem", small), ("ahead/file", large)):
        for _ in range(2):  # downloaded, then served from the cache
            resp = await mirror.get(f"/v2/{repo}/blobs/{blob.digest}")
            assert resp.status == 200 and await resp.read() == blob.data
        shown[repo] = resp
        assert int(resp.headers["Content-Length"]) == blob.size
        assert resp.headers["Docker-Content-Digest"] == blob.digest
        assert resp.headers["Content-Type"] == "application/octet-stream"
    names = {"Accept-Ranges", "Cache-Control", "Docker-Content-Digest", "Content-Type"}
    assert {shown["ahead/mem"].headers[n] for n in names - {"Docker-Content-Digest"}} == {
        shown["ahead/file"].headers[n] for n in names - {"Docker-Content-Digest"}
    }
    ranged = await mirror.get(f"/v2/ahead/mem/blobs/{small.digest}", headers={"Range": "bytes=5-9"})
    assert ranged.status == 206 and await ranged.read() == small.data[5:10]


# -- the admission window (pure logic: no upstream involved) --------------------------------


async def test_window_keeps_order_slots_and_bytes() -> None:
    window = Window(slots=2, budget=10)
    sizes = [3, 3, 3, 50, 1, 1]
    turns = [window.enter(s) for s in sizes]
    await asyncio.sleep(0)
    assert [t.done() for t in turns] == [True, True, False, False, False, False]  # 2 slots
    window.leave(3)
    await asyncio.sleep(0)
    assert [t.done() for t in turns][2:] == [True, False, False, False]
    window.leave(3)
    window.leave(3)  # all done: the 50 (over the budget) runs, alone
    assert [t.done() for t in turns][3:] == [True, False, False]
    assert (window.running, window.running_bytes) == (1, 50)
    window.leave(50)
    assert all(t.done() for t in turns) and window.running == 2


async def test_window_skips_a_cancelled_turn_and_keeps_order() -> None:
    window = Window(slots=1, budget=100)
    first, second, third = window.enter(1), window.enter(1), window.enter(1)
    assert first.done() and not second.done()
    second.cancel()  # its waiter went away
    window.leave(1)
    assert third.done() and (window.running, window.running_bytes) == (1, 1)
