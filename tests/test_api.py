"""The read API through an in-process mirror in front of a real docker-registry."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.support import images
from tests.support.catalog import Pushed
from tests.support.mirror import upstream
from tests.support.registry import Registry

ALL_ACCEPT = ", ".join(
    [images.DOCKER_MANIFEST, images.DOCKER_LIST, images.OCI_MANIFEST, images.OCI_INDEX]
)


@pytest.fixture
async def mirror(mirror_client: Any, registry: Registry, pushed: Pushed) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    return client


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The first entry of a spec error body (asserting the body is one)."""
    assert resp.content_type == "application/json", await resp.text()
    body = await resp.json()
    assert set(body) == {"errors"} and body["errors"], body
    entry: dict[str, Any] = body["errors"][0]
    assert {"code", "message"} <= set(entry)
    return entry


async def test_base_endpoint_announces_registry_api(mirror: TestClient[Any, Any]) -> None:
    resp = await mirror.get("/v2/")
    assert resp.status == 200
    assert resp.headers["Docker-Distribution-API-Version"] == "registry/2.0"


@pytest.mark.parametrize("which", ["docker_list", "oci_index"])
async def test_list_served_byte_exact_with_headers(
    mirror: TestClient[Any, Any], pushed: Pushed, which: str
) -> None:
    index: images.ImageIndex = getattr(pushed, which)
    name = "multi" if which == "docker_list" else "team/oci"
    tag = "latest" if which == "docker_list" else "v1"
    for _ in range(2):  # a miss, then a hit: the same bytes and headers
        resp = await mirror.get(f"/v2/{name}/manifests/{tag}", headers={"Accept": ALL_ACCEPT})
        assert resp.status == 200
        assert await resp.read() == index.manifest
        assert resp.headers["Content-Type"] == index.media_type
        assert int(resp.headers["Content-Length"]) == len(index.manifest)
        assert resp.headers["Docker-Content-Digest"] == index.digest
        assert resp.headers["ETag"] == f'"{index.digest}"'
    head = await mirror.head(f"/v2/{name}/manifests/{tag}", headers={"Accept": ALL_ACCEPT})
    assert head.status == 200
    assert head.headers["Docker-Content-Digest"] == index.digest
    assert int(head.headers["Content-Length"]) == len(index.manifest)
    assert await head.read() == b""


async def test_child_manifest_by_digest(mirror: TestClient[Any, Any], pushed: Pushed) -> None:
    arm = pushed.oci_index.image_for("linux/arm/v7")
    resp = await mirror.get(f"/v2/team/oci/manifests/{arm.manifest_digest}")
    assert resp.status == 200
    assert await resp.read() == arm.manifest
    assert resp.headers["Content-Type"] == images.OCI_MANIFEST


async def test_client_accepting_no_list_gets_what_upstream_gives(
    mirror: TestClient[Any, Any], registry: Registry, pushed: Pushed
) -> None:
    only_image = {"Accept": images.DOCKER_MANIFEST}
    async with aiohttp.ClientSession() as direct:
        async with direct.get(
            f"{registry.url}/v2/library/multi/manifests/latest", headers=only_image
        ) as up:
            assert up.status == 200
            expected = await up.read()
    assert expected != pushed.docker_list.manifest  # distribution picks linux/amd64
    resp = await mirror.get("/v2/multi/manifests/latest", headers=only_image)
    assert await resp.read() == expected
    assert resp.headers["Content-Type"] == images.DOCKER_MANIFEST
    # a list-aware client still gets the list: the tag cache is per class of Accept
    resp = await mirror.get("/v2/multi/manifests/latest", headers={"Accept": ALL_ACCEPT})
    assert await resp.read() == pushed.docker_list.manifest


async def test_blob_get_head_and_ranges(mirror: TestClient[Any, Any], pushed: Pushed) -> None:
    layer = pushed.docker_list.image_for("linux/arm64").layers[0]
    path = f"/v2/multi/blobs/{layer.digest}"
    # a Range on an uncached blob: filled, verified, then the range served
    resp = await mirror.get(path, headers={"Range": "bytes=10-19"})
    assert resp.status == 206
    assert await resp.read() == layer.data[10:20]
    assert resp.headers["Content-Range"] == f"bytes 10-19/{layer.size}"
    resp = await mirror.get(path)
    assert resp.status == 200
    assert await resp.read() == layer.data
    assert resp.headers["Docker-Content-Digest"] == layer.digest
    head = await mirror.head(path)
    assert head.status == 200 and int(head.headers["Content-Length"]) == layer.size
    resp = await mirror.get(path, headers={"Range": f"bytes={layer.size + 10}-"})
    assert resp.status == 416


async def test_head_of_uncached_blob_does_not_download(
    mirror: TestClient[Any, Any], registry: Registry, pushed: Pushed
) -> None:
    layer = pushed.single.layers[1]
    head = await mirror.head(f"/v2/team/single/blobs/{layer.digest}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == layer.size
    assert registry.count("GET", layer.digest) == 0
    assert registry.count("HEAD", layer.digest) == 1


async def test_second_pull_comes_from_cache(
    mirror: TestClient[Any, Any], registry: Registry, pushed: Pushed
) -> None:
    image = pushed.single

    async def pull() -> None:
        resp = await mirror.get("/v2/team/single/manifests/v1", headers={"Accept": ALL_ACCEPT})
        assert await resp.read() == image.manifest
        for blob in image.blobs:
            resp = await mirror.get(f"/v2/team/single/blobs/{blob.digest}")
            assert hashlib.sha256(await resp.read()).hexdigest() == blob.digest.split(":")[1]

    await pull()
    first = len(registry.requests())
    assert registry.count("GET", "/blobs/") == len(image.blobs)
    await pull()
    assert len(registry.requests()) == first  # nothing reached the upstream


async def test_unknown_manifest_and_blob(mirror: TestClient[Any, Any]) -> None:
    resp = await mirror.get("/v2/multi/manifests/nope")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "MANIFEST_UNKNOWN"
    missing = "sha256:" + "0" * 64
    resp = await mirror.get(f"/v2/multi/blobs/{missing}")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "BLOB_UNKNOWN"
    resp = await mirror.head(f"/v2/multi/blobs/{missing}")
    assert resp.status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/multi/manifests/latest"),
        ("DELETE", "/v2/multi/manifests/latest"),
        ("POST", "/v2/multi/blobs/uploads/"),
        ("PATCH", "/v2/multi/blobs/uploads/some-uuid"),
        ("PUT", "/v2/multi/blobs/uploads/some-uuid?digest=sha256:" + "0" * 64),
        ("DELETE", "/v2/multi/blobs/sha256:" + "0" * 64),
    ],
)
async def test_write_methods_are_unsupported(
    mirror: TestClient[Any, Any], registry: Registry, method: str, path: str
) -> None:
    resp = await mirror.request(method, path, data=b"{}")
    assert resp.status == 405
    assert (await error_of(resp))["code"] == "UNSUPPORTED"
    assert registry.requests() == []


async def test_tags_list_paginates_with_link(
    mirror: TestClient[Any, Any], registry: Registry
) -> None:
    image = images.build_image("linux/amd64", rng=40, layers=1, layer_size=1024)
    for tag in ("a", "b", "c", "d", "e"):
        images.push(registry.url, "team/tagged", tag, image)
    resp = await mirror.get("/v2/team/tagged/tags/list")
    assert (await resp.json()) == {"name": "team/tagged", "tags": ["a", "b", "c", "d", "e"]}
    resp = await mirror.get("/v2/team/tagged/tags/list?n=2")
    assert (await resp.json())["tags"] == ["a", "b"]
    link = resp.headers["Link"]
    assert link.startswith("</v2/team/tagged/tags/list?") and link.endswith('>; rel="next"')
    next_path = link[1 : link.index(">")]
    resp = await mirror.get(next_path)
    assert (await resp.json())["tags"] == ["c", "d"]
    resp = await mirror.get("/v2/team/tagged/tags/list?n=2&last=d")
    assert (await resp.json())["tags"] == ["e"]
    assert "Link" not in resp.headers


async def test_catalog_lists_cached_repositories(
    mirror: TestClient[Any, Any], pushed: Pushed
) -> None:
    resp = await mirror.get("/v2/_catalog")
    assert (await resp.json()) == {"repositories": []}
    for path in ("/v2/multi/manifests/latest", "/v2/team/oci/manifests/v1"):
        assert (await mirror.get(path)).status == 200
    resp = await mirror.get("/v2/_catalog")
    assert (await resp.json()) == {"repositories": ["library/multi", "team/oci"]}
    resp = await mirror.get("/v2/_catalog?n=1")
    assert (await resp.json()) == {"repositories": ["library/multi"]}
    assert 'rel="next"' in resp.headers["Link"]


async def test_referrers_via_tag_schema_fallback(
    mirror: TestClient[Any, Any], registry: Registry, pushed: Pushed
) -> None:
    subject = pushed.oci_index.image_for("linux/amd64")
    # two referring manifests (real ones: the registry checks an index's children exist)
    sbom = images.build_image("linux/amd64", oci=True, rng=50, layers=1, layer_size=256)
    sig = images.build_image("linux/amd64", oci=True, rng=51, layers=1, layer_size=256)
    for artifact in (sbom, sig):
        images.push(registry.url, "team/oci", artifact.manifest_digest.replace(":", "_"), artifact)

    def describe(artifact: images.Image, artifact_type: str) -> dict[str, Any]:
        return {
            "mediaType": images.OCI_MANIFEST,
            "digest": artifact.manifest_digest,
            "size": len(artifact.manifest),
            "artifactType": artifact_type,
        }

    descriptor = describe(sbom, "application/vnd.example.sbom")
    other = describe(sig, "application/x-sig")
    index = {"schemaVersion": 2, "mediaType": images.OCI_INDEX, "manifests": [descriptor, other]}
    body = json.dumps(index).encode()
    fallback_tag = subject.manifest_digest.replace(":", "-")
    images.put_manifest(registry.url, "team/oci", fallback_tag, body, images.OCI_INDEX)
    resp = await mirror.get(f"/v2/team/oci/referrers/{subject.manifest_digest}")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == images.OCI_INDEX
    assert await resp.read() == body
    resp = await mirror.get(
        f"/v2/team/oci/referrers/{subject.manifest_digest}?artifactType=application/x-sig"
    )
    assert resp.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in (await resp.json())["manifests"]] == [other["digest"]]
    # a subject nobody refers to has an empty list, not an error
    lonely = pushed.oci_index.image_for("linux/arm64").manifest_digest
    resp = await mirror.get(f"/v2/team/oci/referrers/{lonely}")
    assert resp.status == 200
    assert (await resp.json())["manifests"] == []


async def test_blob_served_only_for_repositories_that_have_it(
    mirror: TestClient[Any, Any], registry: Registry, pushed: Pushed
) -> None:
    layer = pushed.single.layers[0]
    assert (await mirror.get(f"/v2/team/single/blobs/{layer.digest}")).status == 200
    # another repository that does not have the layer upstream: not leaked
    other = images.build_image("linux/amd64", rng=41, layers=1, layer_size=512)
    images.push(registry.url, "team/other", "v1", other)
    resp = await mirror.get(f"/v2/team/other/blobs/{layer.digest}")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "BLOB_UNKNOWN"
    # a repository that has it upstream too: confirmed by a HEAD, served from disk
    images.push_blob(registry.url, "team/third", layer.data)
    registry.reset_counts()
    resp = await mirror.get(f"/v2/team/third/blobs/{layer.digest}")
    assert resp.status == 200 and await resp.read() == layer.data
    assert registry.count("HEAD", layer.digest) == 1
    assert registry.count("GET", layer.digest) == 0
