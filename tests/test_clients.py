"""Real clients through a real `mirror serve`: skopeo, dockerd, containerd, podman.

Two upstreams: a plain docker-registry as docker.io (the default, what dockerd mirrors)
and a token-protected one as ghcr.io (credentials configured in the mirror). The
mirror runs with tag_ttl = 0s, so every tag request revalidates: with the upstreams
stopped, the last test exercises the stale path with every client.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.clients import (
    Containerd,
    Dockerd,
    Podman,
    Skopeo,
    describe,
    write_registries_conf,
)
from tests.support.images import ImageIndex, build_multiplatform, push
from tests.support.mirror import MirrorProcess, upstream
from tests.support.registry import Registry
from tests.support.tokenserver import TokenServer

if TYPE_CHECKING:
    from tests.support.client_fixtures import DockerdFactory

pytestmark = pytest.mark.clients

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
LABEL = "org.mirror.test.platform"
CREDS = ("mirror-user", "s3cret")


@dataclass
class World:
    """The upstreams, what they hold, and the mirror in front of them."""

    hub: Registry
    ghcr: Registry
    tokens: TokenServer
    mirror: MirrorProcess
    docker_list: ImageIndex  # docker.io/library/multi:latest
    oci_index: ImageIndex  # docker.io/team/oci:v1
    private: ImageIndex  # ghcr.io/team/app:v1 (token-protected)

    def start_upstreams(self) -> None:
        self.tokens.start()
        self.hub.start()
        self.ghcr.start()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("clients")
    tokens = TokenServer(root / "tokens")
    tokens.start()
    hub = Registry(root / "hub").start()
    ghcr = Registry(root / "ghcr", token=tokens).start()
    docker_list = build_multiplatform(PLATFORMS, rng=90, layers=2, layer_size=32 * 1024)
    oci_index = build_multiplatform(PLATFORMS, oci=True, rng=91, layers=1, layer_size=32 * 1024)
    private = build_multiplatform(PLATFORMS, oci=True, rng=92, layers=1, layer_size=32 * 1024)
    push(hub.url, "library/multi", "latest", docker_list)
    push(hub.url, "team/oci", "v1", oci_index)
    push(ghcr.url, "team/app", "v1", private, auth=CREDS)
    mirror = MirrorProcess(
        root / "mirror",
        [
            upstream("docker.io", hub.url, default=True, tag_ttl="0s"),
            upstream("ghcr.io", ghcr.url, tag_ttl="0s", username=CREDS[0], password=CREDS[1]),
        ],
    ).start()
    try:
        yield World(hub, ghcr, tokens, mirror, docker_list, oci_index, private)
    finally:
        mirror.stop()
        hub.stop()
        ghcr.stop()
        tokens.stop()


@pytest.fixture
def running(world: World) -> World:
    world.start_upstreams()
    return world


def ok(result: subprocess.CompletedProcess[str], log: str) -> None:
    assert result.returncode == 0, describe(result, log)


def skopeo_pull(skopeo: Skopeo, ref: str, dest: Path, arch: str, variant: str | None) -> set[str]:
    """Copy one platform to a dir: transport; returns the blob digests written."""
    ok(skopeo.copy(ref, f"dir:{dest}", override_arch=arch, override_variant=variant), skopeo.log)
    return {p.name for p in dest.iterdir() if len(p.name) == 64}


def expected_blobs(index: ImageIndex, platform: str) -> set[str]:
    return {b.digest.split(":")[1] for b in index.image_for(platform).blobs}


def test_skopeo_inspect_raw_and_copy_each_platform(
    running: World, skopeo_client: Skopeo, tmp_path: Path
) -> None:
    raw = skopeo_client.inspect(f"docker://{running.mirror.host}/team/oci:v1", raw=True)
    ok(raw, skopeo_client.log)
    assert raw.stdout.encode() == running.oci_index.manifest
    for platform in PLATFORMS:
        _, arch, *variant = platform.split("/")
        got = skopeo_pull(
            skopeo_client,
            f"docker://{running.mirror.host}/multi:latest",
            tmp_path / platform.replace("/", "-"),
            arch,
            variant[0] if variant else None,
        )
        assert got == expected_blobs(running.docker_list, platform)
    info = skopeo_client.inspect(
        f"docker://{running.mirror.host}/ghcr.io/team/app:v1", override_arch="arm64"
    )
    ok(info, skopeo_client.log)
    assert json.loads(info.stdout)["Architecture"] == "arm64"


def test_dockerd_registry_mirror_pulls_each_platform(
    running: World, dockerd_factory: DockerdFactory
) -> None:
    dockerd: Dockerd = dockerd_factory([running.mirror.url])
    for ref, platform in (
        ("multi:latest", "linux/arm64"),
        ("multi:latest", "linux/amd64"),
        ("team/oci:v1", "linux/arm/v7"),
    ):
        dockerd.rmi(ref)
        ok(dockerd.pull(ref, platform=platform), dockerd.log)
        assert dockerd.image_platform(ref) == platform
        assert dockerd.image_label(ref, LABEL) == platform
    log = running.mirror.log()
    assert "path=/v2/library/multi/manifests/latest" in log
    assert dockerd.egress is None or dockerd.egress.attempts == []


def test_containerd_hosts_toml_routes_two_registries_by_ns(
    running: World, containerd: Containerd
) -> None:
    for registry in ("docker.io", "ghcr.io"):
        containerd.write_hosts_toml(None, registry, running.mirror.host)
    hub_ref = "docker.io/library/multi:latest"
    ok(containerd.pull(hub_ref, platform="linux/arm/v7"), containerd.log)
    assert containerd.pulled_platforms(hub_ref) == ["linux/arm/v7"]
    assert containerd.image_label(hub_ref, LABEL) == "linux/arm/v7"
    ghcr_ref = "ghcr.io/team/app:v1"
    ok(containerd.pull(ghcr_ref, platform="linux/arm64"), containerd.log)
    assert containerd.pulled_platforms(ghcr_ref) == ["linux/arm64"]
    assert containerd.image_label(ghcr_ref, LABEL) == "linux/arm64"
    log = running.mirror.log()
    assert "path=/v2/team/app/manifests/v1?ns=ghcr.io status=200" in log
    assert "path=/v2/library/multi/manifests/latest?ns=docker.io status=200" in log
    assert running.ghcr.count("GET", "/v2/team/app/manifests/", status=200) >= 1


def test_podman_path_prefixed_mirror(running: World, podman: Podman, tmp_path: Path) -> None:
    conf = write_registries_conf(
        tmp_path / "registries.conf", "ghcr.io", f"{running.mirror.host}/ghcr.io"
    )
    ref = "ghcr.io/team/app:v1"
    ok(podman.pull(ref, registries_conf=conf, arch="arm", variant="v7"), podman.log)
    assert podman.image_platform(ref) == "linux/arm/v7"
    assert podman.image_label(ref, LABEL) == "linux/arm/v7"
    assert "path=/v2/ghcr.io/team/app/manifests/v1 status=200" in running.mirror.log()


def test_every_client_pulls_again_from_cache_with_the_upstreams_gone(
    running: World,
    dockerd_factory: DockerdFactory,
    containerd: Containerd,
    podman: Podman,
    skopeo_client: Skopeo,
    tmp_path: Path,
) -> None:
    dockerd: Dockerd = dockerd_factory([running.mirror.url])
    for registry in ("docker.io", "ghcr.io"):
        containerd.write_hosts_toml(None, registry, running.mirror.host)
    conf = write_registries_conf(
        tmp_path / "registries.conf", "ghcr.io", f"{running.mirror.host}/ghcr.io"
    )

    def pull_everything(tag: str) -> None:
        for platform in ("linux/arm64", "linux/amd64"):
            dockerd.rmi("multi:latest")
            ok(dockerd.pull("multi:latest", platform=platform), dockerd.log)
            assert dockerd.image_platform("multi:latest") == platform
        containerd.remove_all_images()
        ok(containerd.pull("ghcr.io/team/app:v1", platform="linux/arm64"), containerd.log)
        podman.rmi("ghcr.io/team/app:v1")
        ok(podman.pull("ghcr.io/team/app:v1", registries_conf=conf, arch="amd64"), podman.log)
        assert podman.image_platform("ghcr.io/team/app:v1") == "linux/amd64"
        got = skopeo_pull(
            skopeo_client,
            f"docker://{running.mirror.host}/multi:latest",
            tmp_path / tag,
            "arm",
            "v7",
        )
        assert got == expected_blobs(running.docker_list, "linux/arm/v7")

    pull_everything("online")
    running.hub.stop()
    running.ghcr.stop()
    running.tokens.stop()
    pull_everything("offline")
    log = running.mirror.log()
    assert "event=serve_stale upstream=docker.io repo=library/multi tag=latest" in log
    assert "event=serve_stale upstream=ghcr.io repo=team/app tag=v1" in log
