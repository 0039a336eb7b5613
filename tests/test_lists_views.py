"""Platforms with real clients: synthesized lists, filter and pin views, the list CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.support.clients import (
    Containerd,
    Dockerd,
    Podman,
    Skopeo,
    describe,
    write_registries_conf,
)
from tests.support.images import (
    DOCKER_LIST,
    OCI_INDEX,
    Image,
    ImageIndex,
    build_image,
    build_multiplatform,
    push,
)
from tests.support.mirror import MirrorProcess, render_config, upstream
from tests.support.net import free_port
from tests.support.registry import Registry

if TYPE_CHECKING:
    from tests.support.client_fixtures import DockerdFactory

LABEL = "org.mirror.test.platform"
ACCEPT_LISTS = ", ".join(
    [
        DOCKER_LIST,
        OCI_INDEX,
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


@dataclass
class World:
    hub: Registry
    arm64: Image  # team/app:app-arm64 (Docker schema2)
    amd64: Image  # team/app:app-amd64 (Docker schema2)
    armv7: Image  # team/app:app-armv7 (OCI)
    multi: ImageIndex  # library/multi:latest, 3 platforms
    mirror: MirrorProcess  # lists + an "arm64" filter view + a pinned view on its own port
    pin_port: int
    filtered: MirrorProcess  # upstream platforms = ["linux/arm64"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("platforms")
    hub = Registry(root / "hub").start()
    arm64 = build_image("linux/arm64", rng=100, layers=1, layer_size=16384)
    amd64 = build_image("linux/amd64", rng=101, layers=1, layer_size=16384)
    armv7 = build_image("linux/arm/v7", oci=True, rng=102, layers=1, layer_size=16384)
    multi = build_multiplatform(rng=103, layers=1, layer_size=16384)
    push(hub.url, "team/app", "app-arm64", arm64)
    push(hub.url, "team/app", "app-amd64", amd64)
    push(hub.url, "team/app", "app-armv7", armv7)
    push(hub.url, "library/multi", "latest", multi)
    pin_port = free_port()
    mirror = MirrorProcess(root / "mirror", [upstream("docker.io", hub.url, default=True)])
    mirror.extra_toml = (
        '\n[[lists]]\nname = "team/app:latest"\nsources = ["team/app:app-arm64", '
        '"team/app:app-amd64"]\n'
        '\n[[lists]]\nname = "team/mixed:latest"\nsources = ["team/app:app-armv7", '
        '{ref = "team/app:app-arm64", platform = "linux/arm64"}]\n'
        '\n[[views]]\nname = "arm64"\nplatforms = ["linux/arm64"]\n'
        f'\n[[views]]\nname = "pin-arm64"\nplatforms = ["linux/arm64"]\npin = true\n'
        f'listen = "127.0.0.1:{pin_port}"\n'
    )
    mirror.start()
    filtered = MirrorProcess(
        root / "filtered",
        [upstream("docker.io", hub.url, default=True, platforms=["linux/arm64"])],
    ).start()
    try:
        yield World(hub, arm64, amd64, armv7, multi, mirror, pin_port, filtered)
    finally:
        mirror.stop()
        filtered.stop()
        hub.stop()


def ok(result: subprocess.CompletedProcess[str], log: str) -> None:
    assert result.returncode == 0, describe(result, log)


async def fetch(url: str, accept: str = ACCEPT_LISTS) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Accept": accept}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.clients
def test_synthesized_list_pulled_per_platform_by_every_client(
    world: World,
    dockerd_factory: DockerdFactory,
    containerd: Containerd,
    podman: Podman,
    skopeo_client: Skopeo,
    tmp_path: Path,
) -> None:
    host = world.mirror.host
    raw = skopeo_client.inspect(f"docker://{host}/team/app:latest", raw=True)
    ok(raw, skopeo_client.log)
    doc = json.loads(raw.stdout)
    assert doc["mediaType"] == DOCKER_LIST  # all sources are Docker schema2
    assert [e["digest"] for e in doc["manifests"]] == [world.arm64.digest, world.amd64.digest]
    mixed = json.loads(skopeo_client.inspect(f"docker://{host}/team/mixed:latest", raw=True).stdout)
    assert mixed["mediaType"] == OCI_INDEX  # an OCI source makes it an OCI index

    dockerd: Dockerd = dockerd_factory([world.mirror.url])
    for platform in ("linux/arm64", "linux/amd64"):
        dockerd.rmi("team/app:latest")
        ok(dockerd.pull("team/app:latest", platform=platform), dockerd.log)
        assert dockerd.image_label("team/app:latest", LABEL) == platform

    containerd.write_hosts_toml(None, "docker.io", host)
    for platform in ("linux/amd64", "linux/arm64"):
        containerd.remove_all_images()
        ok(containerd.pull("docker.io/team/app:latest", platform=platform), containerd.log)
        assert containerd.pulled_platforms("docker.io/team/app:latest") == [platform]

    conf = write_registries_conf(tmp_path / "registries.conf", "docker.io", host)
    ok(
        podman.pull("docker.io/team/mixed:latest", registries_conf=conf, arch="arm", variant="v7"),
        podman.log,
    )
    assert podman.image_label("docker.io/team/mixed:latest", LABEL) == "linux/arm/v7"

    info = skopeo_client.inspect(f"docker://{host}/team/mixed:latest", override_arch="arm64")
    ok(info, skopeo_client.log)
    assert json.loads(info.stdout)["Architecture"] == "arm64"


@pytest.mark.clients
def test_docker_manifest_inspect_shows_the_synthesized_list(
    world: World, dockerd_factory: DockerdFactory
) -> None:
    dockerd: Dockerd = dockerd_factory([world.mirror.url])
    result = dockerd.manifest_inspect(f"{world.mirror.host}/team/app:latest")
    ok(result, dockerd.log)
    shown = json.loads(result.stdout)
    assert [m["platform"]["architecture"] for m in shown["manifests"]] == ["arm64", "amd64"]


@pytest.mark.clients
def test_filter_view_serves_only_its_platforms(
    world: World, dockerd_factory: DockerdFactory, skopeo_client: Skopeo
) -> None:
    world.hub.reset_counts()
    raw = skopeo_client.inspect(f"docker://{world.filtered.host}/multi:latest", raw=True)
    ok(raw, skopeo_client.log)
    shown = json.loads(raw.stdout)
    assert [e["platform"]["architecture"] for e in shown["manifests"]] == ["arm64"]

    dockerd: Dockerd = dockerd_factory([world.filtered.url])
    ok(dockerd.pull("multi:latest", platform="linux/arm64"), dockerd.log)
    assert dockerd.image_label("multi:latest", LABEL) == "linux/arm64"
    dockerd.rmi("multi:latest")
    # pulled by the mirror's name, the refusal is the client's own clear message
    refused = dockerd.pull(f"{world.filtered.host}/multi:latest", platform="linux/amd64")
    assert refused.returncode != 0
    assert "no matching manifest for linux/amd64 in the manifest list entries" in (
        refused.stderr
    ), describe(refused)
    # through registry-mirrors it fails too; dockerd then tries Docker Hub (its design,
    # for any mirror error), so the CLI shows that attempt and the daemon log the reason
    refused = dockerd.pull("multi:latest", platform="linux/amd64")
    assert refused.returncode != 0
    assert not dockerd.has_image("multi:latest")
    assert "no matching manifest for linux/amd64" in dockerd.log

    # nothing of the excluded platforms was fetched from the upstream
    for platform in ("linux/amd64", "linux/arm/v7"):
        image = world.multi.image_for(platform)
        for digest in [image.digest] + [b.digest for b in image.blobs]:
            assert world.hub.count("GET", digest) == 0, platform


async def test_filter_view_keeps_the_original_by_digest_and_is_stable(world: World) -> None:
    status, headers, body = await fetch(f"{world.mirror.url}/v2/arm64/multi/manifests/latest")
    assert status == 200
    filtered_digest = headers["Docker-Content-Digest"]
    assert [e["platform"]["architecture"] for e in json.loads(body)["manifests"]] == ["arm64"]
    # canonical bytes: the same digest from the other mirror that filters the same way
    status, headers, _ = await fetch(f"{world.filtered.url}/v2/multi/manifests/latest")
    assert headers["Docker-Content-Digest"] == filtered_digest
    # by the upstream index's own digest: the original bytes
    status, headers, body = await fetch(
        f"{world.mirror.url}/v2/arm64/multi/manifests/{world.multi.digest}"
    )
    assert status == 200 and body == world.multi.manifest
    # a child of an excluded platform is refused, naming what the view has
    amd = world.multi.image_for("linux/amd64").digest
    status, _, body = await fetch(f"{world.mirror.url}/v2/arm64/multi/manifests/{amd}")
    assert status == 404
    assert "linux/amd64" in json.loads(body)["errors"][0]["message"]


@pytest.mark.clients
def test_pin_view_gives_an_amd64_host_the_arm64_image(
    world: World, dockerd_factory: DockerdFactory, podman: Podman, tmp_path: Path
) -> None:
    dockerd: Dockerd = dockerd_factory([f"http://127.0.0.1:{world.pin_port}"])
    ok(dockerd.pull("multi:latest"), dockerd.log)  # no --platform
    assert dockerd.image_platform("multi:latest") == "linux/arm64"
    conf = write_registries_conf(
        tmp_path / "registries.conf", "docker.io", f"{world.mirror.host}/pin-arm64"
    )
    ok(podman.pull("docker.io/team/app:latest", registries_conf=conf), podman.log)
    assert podman.image_label("docker.io/team/app:latest", LABEL) == "linux/arm64"


async def test_missing_platform_names_the_available_ones(world: World) -> None:
    status, _, body = await fetch(
        f"http://127.0.0.1:{world.pin_port}/v2/team/app/manifests/app-amd64"
    )
    assert status == 404
    error = json.loads(body)["errors"][0]
    assert error["code"] == "MANIFEST_UNKNOWN"
    assert "no manifest for linux/arm64" in error["message"]
    assert "the image has: linux/amd64" in error["message"]
    assert error["detail"]["available"] == ["linux/amd64"]


async def test_list_follows_a_moved_source_after_the_ttl(
    mirror_client: Any, registry_factory: Any
) -> None:
    reg: Registry = registry_factory()
    arm = build_image("linux/arm64", rng=110, layers=1, layer_size=1024)
    amd = build_image("linux/amd64", rng=111, layers=1, layer_size=1024)
    amd2 = build_image("linux/amd64", rng=112, layers=1, layer_size=1024)
    push(reg.url, "team/app", "arm", arm)
    push(reg.url, "team/app", "amd", amd)
    mirror = await mirror_client(
        [upstream("docker.io", reg.url, default=True, tag_ttl="1s")],
        lists=[{"name": "team/app:latest", "sources": ["team/app:arm", "team/app:amd"]}],
    )
    resp = await mirror.get("/v2/team/app/manifests/latest")
    first = resp.headers["Docker-Content-Digest"]
    built_at = time.monotonic()
    push(reg.url, "team/app", "amd", amd2)
    resp = await mirror.get("/v2/team/app/manifests/latest")
    if time.monotonic() - built_at < 1.0:
        assert resp.headers["Docker-Content-Digest"] == first  # within the TTL
    await asyncio.sleep(max(0.0, 1.05 - (time.monotonic() - built_at)))
    resp = await mirror.get("/v2/team/app/manifests/latest")
    moved = json.loads(await resp.read())
    assert resp.headers["Docker-Content-Digest"] != first
    assert [e["digest"] for e in moved["manifests"]] == [arm.digest, amd2.digest]
    # children are served under the list's name
    resp = await mirror.get(f"/v2/team/app/manifests/{amd2.digest}")
    assert await resp.read() == amd2.manifest


async def mirror_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m mirror ARGS` without blocking the event loop."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mirror", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def serve_exits(tmp_path: Path, hub: Registry, lists: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "m.toml"
    settings = {
        "listen": f"127.0.0.1:{free_port()}",
        "data_dir": str(tmp_path / "d"),
        "upstreams": [upstream("docker.io", hub.url, default=True)],
    }
    config.write_text(render_config(settings) + lists)
    return subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unknown_source_stops_startup(world: World, tmp_path: Path) -> None:
    result = serve_exits(
        tmp_path,
        world.hub,
        '[[lists]]\nname = "x:1"\nsources = ["team/app:app-arm64", "team/app:nope"]\n',
    )
    assert result.returncode == 2, result.stderr
    assert "lists[0].sources[1]: docker.io/team/app:nope not found upstream" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_sources_of_one_platform_stop_startup(world: World, tmp_path: Path) -> None:
    result = serve_exits(
        tmp_path,
        world.hub,
        '[[lists]]\nname = "x:1"\nsources = ["team/app:app-arm64", "multi:latest"]\n',
    )
    assert result.returncode == 2, result.stderr
    assert "lists[0].sources[1]" in result.stderr and "lists[0].sources[0]" in result.stderr
    assert "linux/arm64" in result.stderr


async def test_list_cli_creates_and_inspects_beside_a_running_daemon(world: World) -> None:
    config = str(world.mirror.config_path)
    armv7 = build_image("linux/arm/v7", rng=120, layers=1, layer_size=4096)
    amd64 = build_image("linux/amd64", rng=121, layers=1, layer_size=4096)
    push(world.hub.url, "team/app", "cli-armv7", armv7)
    push(world.hub.url, "team/app", "cli-amd64", amd64)
    created = await mirror_cli(
        "list",
        "create",
        "--config",
        config,
        "team/cli:v1",
        "team/app:cli-armv7",
        "team/app:cli-amd64",
        "--platform-of",
        "team/app:cli-armv7=linux/arm/v7",
    )
    assert created.returncode == 0, created.stderr
    assert "created docker.io/team/cli:v1" in created.stdout
    assert "linux/arm/v7" in created.stdout and "linux/amd64" in created.stdout
    deadline = time.monotonic() + 10
    while True:  # the daemon picks stored lists up within seconds
        status, headers, body = await fetch(f"{world.mirror.url}/v2/team/cli/manifests/v1")
        if status == 200 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert status == 200, body
    entries = json.loads(body)["manifests"]
    assert [e["digest"] for e in entries] == [armv7.digest, amd64.digest]
    for blob in amd64.blobs:  # pull one platform's blobs through the list's name
        status, _, body = await fetch(f"{world.mirror.url}/v2/team/cli/blobs/{blob.digest}")
        assert status == 200 and body == blob.data

    deadline = time.monotonic() + 10
    while True:  # the daemon commits downloads at the next lull (about a second)
        inspected = await mirror_cli(
            "list",
            "inspect",
            "--config",
            config,
            "team/cli:v1",
            "--json",
        )
        assert inspected.returncode == 0, inspected.stderr
        report = json.loads(inspected.stdout)
        cached = {p["platform"]: p["cached"] for p in report["platforms"]}
        if cached.get("linux/amd64") == "complete" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert report["synthesized"] and report["digest"] == headers["Docker-Content-Digest"]
    assert cached == {
        "linux/arm/v7": "partial",  # its manifest is cached, its layers not
        "linux/amd64": "complete",
    }

    bad = await mirror_cli(
        "list",
        "create",
        "--config",
        config,
        "team/cli:v2",
        "team/app:app-arm64",
        "multi:latest",
    )
    assert bad.returncode == 1
    assert "both give platform linux/arm64" in bad.stderr
