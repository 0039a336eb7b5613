"""Proves the integration-test support infrastructure against a real registry and skopeo."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import socket
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.support.fixtures import ProxyFactory, RegistryFactory, Skopeo
from tests.support.images import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    RegistryClient,
    RegistryError,
    build_image,
    build_layer,
    build_multiplatform,
    get_blob,
    get_manifest,
    push,
    push_blob,
    put_manifest,
)
from tests.support.net import ThreadedAiohttpServer, free_port, port_is_open, wait_for_port
from tests.support.proxy import FaultyProxy
from tests.support.registry import AccessEntry, Registry
from tests.support.tokenserver import TokenServer

CREDS = ("mirror-user", "s3cret")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- net ----------------------------------------------------------------------------------------


def test_wait_for_port_times_out_with_message() -> None:
    port = free_port()
    with pytest.raises(TimeoutError, match=f"127.0.0.1:{port}"):
        wait_for_port("127.0.0.1", port, timeout=0.2)


def _hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


def test_threaded_server_restarts_on_same_port() -> None:
    server = ThreadedAiohttpServer(_hello_app)
    server.start()
    try:
        port = server.port
        assert urllib.request.urlopen(server.url + "/").read() == b"hello"
        server.stop()
        assert not port_is_open("127.0.0.1", port)
        server.start()
        assert server.port == port
        assert urllib.request.urlopen(server.url + "/").read() == b"hello"
    finally:
        server.stop()


async def test_threaded_server_usable_from_async_test(token_server: TokenServer) -> None:
    async with aiohttp.ClientSession() as session:
        params = [("service", token_server.service), ("scope", "repository:public/a:pull,push")]
        async with session.get(token_server.realm, params=params) as resp:
            assert resp.status == 200
            body = await resp.json()
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["access"] == [{"type": "repository", "name": "public/a", "actions": ["pull"]}]
    assert claims["aud"] == token_server.service and claims["iss"] == token_server.issuer
    assert body["expires_in"] == 300 and body["access_token"] == body["token"]


# -- images -------------------------------------------------------------------------------------


def test_layers_are_real_deterministic_tars() -> None:
    blob, diff_id = build_layer(10_000, 7, oci=True)
    again, _ = build_layer(10_000, 7, oci=True)
    assert blob.digest == again.digest and blob.media_type == OCI_LAYER
    raw = gzip.decompress(blob.data)
    assert sha256(raw) == diff_id
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        sizes = [m.size for m in tar.getmembers() if m.isfile()]
    assert sum(sizes) == 10_000
    image = build_image("linux/arm/v7", label="x", layers=3, layer_size=1000)
    config = json.loads(image.config.data)
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm", "v7")
    assert config["config"]["Labels"]["org.mirror.test.label"] == "x"
    assert len(config["rootfs"]["diff_ids"]) == 3 and image.media_type == DOCKER_MANIFEST


# -- plain registry + skopeo --------------------------------------------------------------------


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_push_index_and_skopeo_inspect_raw(registry: Registry, skopeo: Skopeo, oci: bool) -> None:
    index = build_multiplatform(oci=oci, layer_size=8 * 1024)
    assert index.media_type == (OCI_INDEX if oci else DOCKER_LIST)
    assert push(registry.url, "lib/multi", "v1", index) == index.digest
    out = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/lib/multi:v1")
    assert out.stdout == index.manifest
    body, media_type, digest = get_manifest(registry.url, "lib/multi", index.digest)
    assert (body, media_type, digest) == (index.manifest, index.media_type, index.digest)
    child = index.image_for("linux/arm/v7")
    assert get_manifest(registry.url, "lib/multi", child.digest)[1] == (
        OCI_MANIFEST if oci else DOCKER_MANIFEST
    )
    assert registry.count("PUT", "/manifests/") == 4
    assert registry.count("PUT", "/blobs/uploads/") == 9
    assert registry.count("GET", "/manifests/v1") >= 1
    registry.reset_counts()
    assert registry.count("PUT", "/manifests/") == 0
    get_blob(registry.url, "lib/multi", child.layers[0].digest)
    path = f"/v2/lib/multi/blobs/{child.layers[0].digest}"
    assert registry.requests() == [AccessEntry("GET", path, 200)]


def test_skopeo_override_arch_copies_arm64(
    registry: Registry, skopeo: Skopeo, tmp_path: Path
) -> None:
    index = build_multiplatform(layer_size=4 * 1024)
    push(registry.url, "lib/arch", "v1", index)
    dest = tmp_path / "arm64"
    skopeo(
        "--override-arch", "arm64", "copy", "--src-tls-verify=false",
        f"docker://{registry.host}/lib/arch:v1", f"dir:{dest}",
    )  # fmt: skip
    manifest = json.loads((dest / "manifest.json").read_bytes())
    arm64 = index.image_for("linux/arm64")
    assert [layer["digest"] for layer in manifest["layers"]] == [b.digest for b in arm64.layers]
    for blob in arm64.layers:
        assert (dest / blob.digest.removeprefix("sha256:")).read_bytes() == blob.data


def test_registry_stop_start_keeps_port_and_content(registry_factory: RegistryFactory) -> None:
    reg = registry_factory()
    image = build_image(layer_size=1024)
    push(reg.url, "lib/keep", "v1", image)
    reg.stop()
    assert not port_is_open("127.0.0.1", reg.port)
    reg.start()
    assert get_manifest(reg.url, "lib/keep", "v1")[0] == image.manifest
    reg.kill()
    assert not reg.running
    reg.start()
    assert reg.count("GET", "/manifests/v1") == 1  # counts survive restarts


def test_manifest_over_4mib_is_rejected_by_distribution(registry: Registry) -> None:
    big = json.dumps({"schemaVersion": 2, "pad": "x" * (4 << 20)}).encode()
    with pytest.raises(RegistryError) as info:
        put_manifest(registry.url, "lib/big", "v1", big, OCI_MANIFEST)
    assert info.value.status == 400 and b"too large" in info.value.body


# -- token auth ---------------------------------------------------------------------------------


def test_token_auth_push_and_pull_policy(
    auth_registry: Registry, token_server: TokenServer, skopeo: Skopeo
) -> None:
    for repo in ("private/x", "public/x"):
        push(auth_registry.url, repo, "v1", build_image(layer_size=2048, label=repo), auth=CREDS)
    assert token_server.issued[0] == (CREDS[0], ("repository:private/x:pull,push",))
    with pytest.raises(RegistryError):
        push(auth_registry.url, "public/y", "v1", build_image(layer_size=16))  # anonymous
    base = ["inspect", "--raw", "--tls-verify=false"]
    ref = f"docker://{auth_registry.host}"
    denied = skopeo(*base, "--no-creds", f"{ref}/private/x:v1", check=False)
    assert denied.returncode != 0
    assert b"unauthorized" in denied.stderr.lower() or b"denied" in denied.stderr.lower()
    skopeo(*base, "--creds", ":".join(CREDS), f"{ref}/private/x:v1")
    skopeo(*base, "--no-creds", f"{ref}/public/x:v1")
    wrong = skopeo(*base, "--creds", "mirror-user:nope", f"{ref}/public/x:v1", check=False)
    assert wrong.returncode != 0 and token_server.refused
    assert auth_registry.count("GET", "/v2/private/x/manifests/v1", status=401) >= 1
    assert auth_registry.count("GET", "/v2/public/x/manifests/v1", status=200) == 1


def test_client_reuses_token_and_kid_header_works(
    registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    with TokenServer(tmp_path / "kid", header_mode="kid") as kid_server:
        assert isinstance(kid_server, TokenServer)
        reg = registry_factory(token=kid_server)
        client = RegistryClient(reg.url, auth=CREDS)
        image = build_image(layer_size=512)
        for blob in image.blobs:
            client.push_blob("lib/kid", blob)
        client.put_manifest("lib/kid", "v1", image.manifest, image.media_type)
        assert client.token_fetches == 1 and len(kid_server.issued) == 1


# -- faulty proxy -------------------------------------------------------------------------------


def test_proxy_passes_through_and_flips_bytes(
    registry: Registry, faulty_proxy: FaultyProxy
) -> None:
    image = build_image(layer_size=32 * 1024)
    push(faulty_proxy.url, "lib/proxied", "v1", image)  # uploads + Location through the proxy
    layer = image.layers[0]
    with urllib.request.urlopen(f"{faulty_proxy.url}/v2/lib/proxied/blobs/{layer.digest}") as r:
        assert r.headers["Docker-Content-Digest"] == layer.digest
        assert int(r.headers["Content-Length"]) == layer.size
        assert sha256(r.read()) == layer.digest
    faulty_proxy.flip_blob_byte = True
    flipped = get_blob(faulty_proxy.url, "lib/proxied", layer.digest)
    assert len(flipped) == layer.size and sha256(flipped) != layer.digest
    assert sum(a != b for a, b in zip(flipped, layer.data, strict=True)) == 1
    assert get_manifest(faulty_proxy.url, "lib/proxied", "v1")[0] == image.manifest
    assert faulty_proxy.count("GET", "/blobs/") == 2
    assert registry.count("GET", "/blobs/") == 2


def test_skopeo_copy_all_through_proxy(
    registry: Registry, faulty_proxy: FaultyProxy, skopeo: Skopeo
) -> None:
    index = build_multiplatform(("linux/amd64", "linux/arm64"), oci=True, layer_size=20_000)
    push(registry.url, "lib/src", "v1", index)
    skopeo(
        "copy", "--all", "--src-tls-verify=false", "--dest-tls-verify=false",
        f"docker://{registry.host}/lib/src:v1", f"docker://127.0.0.1:{faulty_proxy.port}/lib/dst:v1",
    )  # fmt: skip
    assert get_manifest(registry.url, "lib/dst", "v1")[0] == index.manifest
    assert faulty_proxy.count("PUT", "/v2/lib/dst/manifests/") == 3


def test_proxy_forwards_auth_challenges(
    auth_registry: Registry, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(auth_registry)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(proxy.url + "/v2/")
    assert info.value.headers["WWW-Authenticate"].startswith("Bearer realm=")
    info.value.close()
    image = build_image(layer_size=256)
    push(proxy.url, "private/p", "v1", image, auth=CREDS)
    assert get_manifest(proxy.url, "private/p", "v1", auth=CREDS)[0] == image.manifest


def test_proxy_fail_status_delay_and_vanishing(faulty_proxy: FaultyProxy) -> None:
    faulty_proxy.fail_status = 503
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(faulty_proxy.url + "/v2/")
    assert info.value.code == 503
    info.value.close()
    faulty_proxy.fail_status = None
    faulty_proxy.delay_seconds = 0.2
    started = time.monotonic()
    urllib.request.urlopen(faulty_proxy.url + "/v2/").close()
    assert time.monotonic() - started >= 0.2
    port = faulty_proxy.port
    faulty_proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    faulty_proxy.start()
    faulty_proxy.delay_seconds = 0
    urllib.request.urlopen(faulty_proxy.url + "/v2/").close()


def test_proxy_throttle_and_stop_mid_download(
    registry: Registry, faulty_proxy: FaultyProxy
) -> None:
    data = build_layer(256 * 1024, 3)[0].data
    digest = push_blob(registry.url, "lib/slow", data)
    faulty_proxy.throttle_bytes_per_sec = 64 * 1024
    errors: list[BaseException] = []

    def download() -> None:
        try:
            get_blob(faulty_proxy.url, "lib/slow", digest)
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=download)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()  # 256 KiB at 64 KiB/s takes ~4 s
    started = time.monotonic()
    faulty_proxy.stop()
    thread.join(5)
    assert time.monotonic() - started < 3 and not thread.is_alive()
    assert errors  # the client saw a truncated body / reset connection


def test_token_server_rejects_bad_basic_auth(token_server: TokenServer) -> None:
    bad = base64.b64encode(b"mirror-user:wrong").decode()
    request = urllib.request.Request(
        token_server.realm + "?service=x&scope=repository:a:pull",
        headers={"Authorization": f"Basic {bad}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 401
    info.value.close()
    assert token_server.issued == [] and len(token_server.refused) == 1
