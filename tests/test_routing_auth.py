"""Routing to several upstreams (ns=, path prefix, default) and the bearer-token flow."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support import images
from tests.support.mirror import upstream
from tests.support.registry import Registry
from tests.support.tokenserver import TokenServer
from tests.test_api import error_of

CREDS = ("mirror-user", "s3cret")


@pytest.fixture(scope="session")
def private_image(auth_registry_session: Registry) -> images.ImageIndex:
    """team/app:v1 in the token-protected registry (only mirror-user may pull)."""
    auth_registry_session.start()
    index = images.build_multiplatform(("linux/amd64", "linux/arm64"), oci=True, rng=60)
    images.push(auth_registry_session.url, "team/app", "v1", index, auth=CREDS)
    return index


@pytest.fixture(scope="session")
def public_image(auth_registry_session: Registry) -> images.Image:
    """public/tool:v1 in the token-protected registry (anonymous pull allowed)."""
    auth_registry_session.start()
    image = images.build_image("linux/amd64", rng=61, layers=1, layer_size=4096)
    images.push(auth_registry_session.url, "public/tool", "v1", image, auth=CREDS)
    return image


def two_upstreams(plain: Registry, private: Registry, **ghcr: Any) -> list[dict[str, Any]]:
    return [
        upstream("docker.io", plain.url, default=True),
        upstream("ghcr.io", private.url, username=CREDS[0], password=CREDS[1], **ghcr),
    ]


async def test_ns_parameter_routes_to_its_upstream(
    mirror_client: Any,
    registry: Registry,
    auth_registry: Registry,
    private_image: images.ImageIndex,
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(two_upstreams(registry, auth_registry))
    resp = await mirror.get("/v2/team/app/manifests/v1?ns=ghcr.io")
    assert resp.status == 200
    assert await resp.read() == private_image.manifest
    assert resp.headers["OCI-Namespace"] == "ghcr.io"
    layer = private_image.images[1].layers[0]
    resp = await mirror.get(f"/v2/team/app/blobs/{layer.digest}?ns=ghcr.io")
    assert await resp.read() == layer.data
    # the same name without ns= goes to the default upstream, which lacks it
    resp = await mirror.get("/v2/team/app/manifests/v1")
    assert resp.status == 404
    assert registry.count("GET", "/v2/team/app/manifests/v1") == 1


async def test_path_prefix_routes_to_its_upstream(
    mirror_client: Any,
    registry: Registry,
    auth_registry: Registry,
    private_image: images.ImageIndex,
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(two_upstreams(registry, auth_registry))
    resp = await mirror.get("/v2/ghcr.io/team/app/manifests/v1")
    assert resp.status == 200
    assert await resp.read() == private_image.manifest
    assert "OCI-Namespace" not in resp.headers
    child = private_image.images[0]
    resp = await mirror.get(f"/v2/ghcr.io/team/app/manifests/{child.manifest_digest}")
    assert await resp.read() == child.manifest
    resp = await mirror.get("/v2/ghcr.io/team/app/tags/list")
    assert (await resp.json()) == {"name": "ghcr.io/team/app", "tags": ["v1"]}
    assert auth_registry.count("GET", "/v2/team/app/manifests/v1", status=200) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/v2/team/app/manifests/v1?ns=quay.io",
        "/v2/quay.io/team/app/manifests/v1",
        "/v2/evil.example.com:443/x/blobs/sha256:" + "a" * 64,
        "/v2/_catalog?ns=quay.io",
    ],
)
async def test_unconfigured_registry_is_refused(
    mirror_client: Any, registry: Registry, auth_registry: Registry, path: str
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(two_upstreams(registry, auth_registry))
    resp = await mirror.get(path)
    assert resp.status == 403
    error = await error_of(resp)
    assert error["code"] == "DENIED"
    assert "not mirrored here" in error["message"]
    assert registry.requests() == [] and auth_registry.requests() == []


async def test_without_default_a_plain_name_needs_a_registry(
    mirror_client: Any, auth_registry: Registry
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("ghcr.io", auth_registry.url, username=CREDS[0], password=CREDS[1])]
    )
    resp = await mirror.get("/v2/team/app/manifests/v1")
    assert resp.status == 404
    assert (await error_of(resp))["code"] == "NAME_UNKNOWN"


async def test_docker_hub_short_names_get_library_prefix(
    mirror_client: Any, registry: Registry
) -> None:
    image = images.build_image("linux/arm64", rng=62, layers=1, layer_size=1024)
    images.push(registry.url, "library/shorty", "1.0", image)
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    for path in ("/v2/shorty/manifests/1.0", "/v2/library/shorty/manifests/1.0"):
        resp = await mirror.get(path)
        assert await resp.read() == image.manifest
    assert registry.count("GET", "/v2/library/shorty/manifests/1.0") == 1  # one cache entry


async def test_bearer_token_fetched_once_and_reused(
    mirror_client: Any,
    registry: Registry,
    auth_registry: Registry,
    token_server: TokenServer,
    private_image: images.ImageIndex,
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(two_upstreams(registry, auth_registry))
    image = private_image.images[0]
    resp = await mirror.get("/v2/ghcr.io/team/app/manifests/v1")
    assert resp.status == 200
    for blob in image.blobs:
        resp = await mirror.get(f"/v2/ghcr.io/team/app/blobs/{blob.digest}")
        assert await resp.read() == blob.data
    resp = await mirror.get(f"/v2/ghcr.io/team/app/manifests/{image.manifest_digest}")
    assert resp.status == 200
    # one token for the repository's pull scope, issued to the configured user
    assert token_server.count("repository:team/app:pull") == 1
    assert {user for user, _ in token_server.issued} == {"mirror-user"}


async def test_anonymous_token_for_public_repository(
    mirror_client: Any,
    auth_registry: Registry,
    token_server: TokenServer,
    public_image: images.Image,
    private_image: images.ImageIndex,
) -> None:
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("ghcr.io", auth_registry.url, default=True)]
    )
    resp = await mirror.get("/v2/public/tool/manifests/v1")
    assert resp.status == 200
    assert await resp.read() == public_image.manifest
    assert token_server.issued and all(user is None for user, _ in token_server.issued)
    # without credentials the private repository is refused, as a spec error
    resp = await mirror.get("/v2/team/app/manifests/v1")
    assert resp.status == 401
    assert (await error_of(resp))["code"] == "UNAUTHORIZED"


async def test_wrong_credentials_are_reported_and_never_echoed(
    mirror_factory: Any, auth_registry: Registry, private_image: images.ImageIndex
) -> None:
    secret = "wrong-but-secret-pw"
    proc = mirror_factory(
        [
            upstream(
                "ghcr.io", auth_registry.url, default=True, username="mirror-user", password=secret
            )
        ]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proc.url}/v2/team/app/manifests/v1") as resp:
            assert resp.status == 401
            body = await resp.text()
    assert "UNAUTHORIZED" in body
    encoded = base64.b64encode(f"mirror-user:{secret}".encode()).decode()
    for text in (body, proc.log()):
        assert secret not in text and encoded not in text
    assert "event=request" in proc.log()


async def test_credentials_from_password_env(
    mirror_factory: Any,
    auth_registry: Registry,
    private_image: images.ImageIndex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GHCR_TEST_PASSWORD", CREDS[1])
    proc = mirror_factory(
        [
            upstream(
                "ghcr.io",
                auth_registry.url,
                default=True,
                username=CREDS[0],
                password_env="GHCR_TEST_PASSWORD",
            )
        ]
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proc.url}/v2/team/app/manifests/v1") as resp:
            assert resp.status == 200
            assert await resp.read() == private_image.manifest
    assert CREDS[1] not in proc.log()


async def test_rate_limit_relayed_with_retry_after(mirror_client: Any) -> None:
    # docker-registry never answers 429, so this one upstream is a stub (a mock by
    # necessity): it rate-limits every request the way Docker Hub does.
    seen: list[str] = []

    async def limited(request: web.Request) -> web.Response:
        seen.append(request.method)
        return web.json_response(
            {"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]},
            status=429,
            headers={"Retry-After": "42"},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", limited)
    async with TestServer(app, host="127.0.0.1") as server:
        mirror: TestClient[Any, Any] = await mirror_client(
            [upstream("docker.io", str(server.make_url("")).rstrip("/"), default=True)]
        )
        resp = await mirror.get("/v2/library/x/manifests/latest")
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "42"
        assert (await error_of(resp))["code"] == "TOOMANYREQUESTS"
    assert seen == ["GET"]  # a 429 is relayed, not retried
