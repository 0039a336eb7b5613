"""The real-client drivers work: each client pulls through a "mirror" and gets the platform.

A plain ``docker-registry`` behind a `RequestRecorder` stands in for the mirror: it serves the
same multi-platform image as ``library/multi`` (what dockerd asks a registry-mirror for),
``owner/multi`` (containerd strips the registry host and adds ``?ns=ghcr.io``) and
``ghcr.io/owner/multi`` (podman with a path-prefixed mirror location). The recorded requests
pin down what each client sends, which is what the mirror has to serve.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.clients import (
    TIMEOUT_RETURNCODE,
    Containerd,
    Dockerd,
    Podman,
    RequestRecorder,
    Skopeo,
    descendants,
    describe,
    run_command,
    write_registries_conf,
)
from tests.support.images import ImageIndex, build_multiplatform, push
from tests.support.registry import Registry

if TYPE_CHECKING:  # imported by pytest as a plugin (importing it here breaks assert rewriting)
    from tests.support.client_fixtures import DockerdFactory

pytestmark = pytest.mark.clients

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
LABEL = "org.mirror.test.platform"  # set by tests.support.images.build_image
INDEX_TYPES = {
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
}


@dataclass
class Upstream:
    """The stand-in mirror: a registry with the test image, and a recorder in front of it."""

    registry: Registry
    recorder: RequestRecorder
    index: ImageIndex
    oci_index: ImageIndex


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """Registry holding a 3-platform image under several names, behind a recorder."""
    registry = Registry(tmp_path_factory.mktemp("upstream")).start()
    index = build_multiplatform(PLATFORMS, rng=7, layers=1, layer_size=2048)
    oci_index = build_multiplatform(PLATFORMS, oci=True, rng=8, layers=1, layer_size=2048)
    for repo in ("library/multi", "owner/multi", "ghcr.io/owner/multi"):
        push(registry.url, repo, "latest", index)
    push(registry.url, "library/multi-oci", "latest", oci_index)
    recorder = RequestRecorder(registry.url).start()
    try:
        yield Upstream(registry, recorder, index, oci_index)
    finally:
        recorder.stop()
        registry.stop()


@pytest.fixture
def recorder(upstream: Upstream) -> RequestRecorder:
    """The module's recorder, emptied for this test."""
    upstream.recorder.clear()
    return upstream.recorder


@pytest.fixture
def dockerd(dockerd_factory: DockerdFactory, upstream: Upstream) -> Dockerd:
    """A dockerd whose only registry-mirror is the recorder (images removed)."""
    daemon = dockerd_factory([upstream.recorder.url])
    if daemon.egress is not None:
        daemon.egress.clear()
    return daemon


def _ok(result: subprocess.CompletedProcess[str], log: str) -> None:
    assert result.returncode == 0, describe(result, log)


def _child_digest(index: ImageIndex, platform: str) -> str:
    return index.image_for(platform).manifest_digest


# -- dockerd ----------------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm/v7"])
def test_dockerd_pulls_foreign_platform_through_registry_mirror(
    dockerd: Dockerd, recorder: RequestRecorder, upstream: Upstream, platform: str
) -> None:
    result = dockerd.pull("multi:latest", platform=platform)
    _ok(result, dockerd.log)
    assert dockerd.image_platform("multi:latest") == platform
    assert dockerd.image_label("multi:latest", LABEL) == platform
    assert dockerd.repo_digests("multi:latest") == [f"multi@{upstream.index.digest}"]

    paths = [r.target for r in recorder.requests]
    assert "/v2/" in paths, recorder.summary()
    assert f"/v2/library/multi/manifests/{_child_digest(upstream.index, platform)}" in paths
    assert all(p == "/v2/" or p.startswith("/v2/library/multi/") for p in paths), paths
    head = recorder.matching("HEAD", "/manifests/latest")
    assert head, recorder.summary()
    assert INDEX_TYPES <= set(head[0].accept)
    assert dockerd.egress is not None and dockerd.egress.attempts == []


def test_dockerd_missing_platform_falls_back_to_docker_hub(
    dockerd: Dockerd, recorder: RequestRecorder
) -> None:
    result = dockerd.pull("multi:latest", platform="linux/s390x")
    assert result.returncode != 0
    # dockerd treats "no matching manifest" from a mirror as a reason to try Docker Hub; the
    # error it prints is the Hub's (blocked here), not the mirror's
    assert "registry-1.docker.io" in result.stderr, describe(result)
    assert dockerd.egress is not None
    assert "registry-1.docker.io:443" in dockerd.egress.hosts()
    assert recorder.matching("HEAD", "/v2/library/multi/manifests/latest")


def test_dockerd_manifest_inspect_talks_to_the_registry_directly(
    dockerd: Dockerd, recorder: RequestRecorder, upstream: Upstream
) -> None:
    result = dockerd.manifest_inspect(f"{recorder.host}/library/multi:latest")
    _ok(result, dockerd.log)
    listed = json.loads(result.stdout)
    assert [m["digest"] for m in listed["manifests"]] == [
        i.manifest_digest for i in upstream.index.images
    ]
    # docker CLI 20.10 cannot show OCI indexes/manifests at all
    oci = dockerd.manifest_inspect(f"{recorder.host}/library/multi-oci:latest")
    assert oci.returncode != 0 and "no such manifest" in oci.stderr, describe(oci)


def test_dockerd_stop_leaves_no_process(upstream: Upstream) -> None:
    daemon = Dockerd([upstream.recorder.url]).start()
    try:
        assert daemon.private_containerd, daemon.log[-3000:]
        assert daemon._proc is not None
        tree = [daemon._proc.pid, *descendants(daemon._proc.pid)]
        assert len(tree) >= 2  # dockerd and its own containerd
    finally:
        daemon.stop()
    time.sleep(0.1)
    alive = [pid for pid in tree if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
    assert alive == []
    assert not daemon.dir.exists()
    assert "Daemon has completed initialization" in daemon.log


def _not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


# -- containerd -------------------------------------------------------------------------------


def test_containerd_pulls_one_platform_through_hosts_toml(
    containerd: Containerd, recorder: RequestRecorder, upstream: Upstream
) -> None:
    containerd.write_hosts_toml(None, "docker.io", recorder.host)
    ref = "docker.io/library/multi:latest"
    result = containerd.pull(ref, platform="linux/arm64")
    _ok(result, containerd.log)
    assert containerd.pulled_platforms(ref) == ["linux/arm64"]
    assert containerd.image_platform(ref) == "linux/arm64"
    assert containerd.image_label(ref, LABEL) == "linux/arm64"

    assert recorder.requests, "containerd did not use the mirror host"
    for request in recorder.requests:
        assert request.path.startswith("/v2/library/multi/"), recorder.summary()
        assert request.params == {"ns": ["docker.io"]}, recorder.summary()
    head = recorder.matching("HEAD", "/manifests/latest")
    assert head and INDEX_TYPES <= set(head[0].accept)
    assert not recorder.matching("GET", "/v2/" + "_catalog")
    child = _child_digest(upstream.index, "linux/arm64")
    assert recorder.matching("GET", f"/manifests/{child}")


def test_containerd_all_platforms_and_other_registry(
    containerd: Containerd, recorder: RequestRecorder
) -> None:
    containerd.write_hosts_toml(None, "ghcr.io", recorder.url)
    ref = "ghcr.io/owner/multi:latest"
    result = containerd.pull(ref, all_platforms=True)
    _ok(result, containerd.log)
    assert sorted(containerd.pulled_platforms(ref)) == sorted(PLATFORMS)
    assert containerd.image_label(ref, LABEL, platform="linux/arm/v7") == "linux/arm/v7"
    assert {r.query for r in recorder.requests} == {"ns=ghcr.io"}
    assert all(r.path.startswith("/v2/owner/multi/") for r in recorder.requests)


def test_containerd_path_prefixed_mirror_with_override_path(
    containerd: Containerd, recorder: RequestRecorder
) -> None:
    containerd.write_hosts_toml(None, "ghcr.io", f"{recorder.url}/v2/ghcr.io", override_path=True)
    ref = "ghcr.io/owner/multi:latest"
    _ok(containerd.pull(ref, platform="linux/arm64"), containerd.log)
    assert containerd.image_platform(ref) == "linux/arm64"
    assert recorder.requests
    for request in recorder.requests:
        assert request.path.startswith("/v2/ghcr.io/owner/multi/"), recorder.summary()
        assert request.query == "ns=ghcr.io"


def test_containerd_mirror_miss_reports_the_fallback_error(
    containerd: Containerd, recorder: RequestRecorder
) -> None:
    containerd.write_hosts_toml(None, "docker.io", recorder.host)
    result = containerd.pull("docker.io/library/absent:latest")
    assert result.returncode != 0
    assert "registry-1.docker.io" in result.stderr, describe(result)
    assert [str(r) for r in recorder.requests] == [
        "HEAD /v2/library/absent/manifests/latest?ns=docker.io -> 404"
    ]


# -- podman -----------------------------------------------------------------------------------


def test_podman_pulls_through_path_prefixed_mirror(
    podman: Podman, recorder: RequestRecorder, tmp_path: Path
) -> None:
    conf = write_registries_conf(
        tmp_path / "registries.conf", "ghcr.io", f"{recorder.host}/ghcr.io"
    )
    ref = "ghcr.io/owner/multi:latest"
    result = podman.pull(ref, registries_conf=conf, arch="arm", variant="v7")
    _ok(result, podman.log)
    assert podman.image_platform(ref) == "linux/arm/v7"
    assert podman.image_label(ref, LABEL) == "linux/arm/v7"
    paths = [r.target for r in recorder.requests]
    assert paths[0] == "/v2/"
    assert all(p.startswith("/v2/ghcr.io/owner/multi/") for p in paths[1:]), paths
    assert "/v2/ghcr.io/owner/multi/manifests/latest" in paths
    manifest_get = recorder.matching("GET", "/manifests/latest")[0]
    assert INDEX_TYPES <= set(manifest_get.accept)
    assert podman.egress is not None and podman.egress.attempts == []


# -- skopeo -----------------------------------------------------------------------------------


def test_skopeo_copy_with_override_arch(
    skopeo_client: Skopeo, recorder: RequestRecorder, upstream: Upstream, tmp_path: Path
) -> None:
    raw = skopeo_client.inspect(f"{recorder.host}/library/multi:latest", raw=True)
    _ok(raw, skopeo_client.log)
    assert json.loads(raw.stdout)["mediaType"] in INDEX_TYPES

    layout = f"oci:{tmp_path / 'layout'}:copied"
    result = skopeo_client.copy(
        f"{recorder.host}/library/multi:latest",
        layout,
        override_arch="arm",
        override_variant="v7",
    )
    _ok(result, skopeo_client.log)
    config = skopeo_client.inspect_json(layout, config=True)
    assert (config["architecture"], config.get("variant")) == ("arm", "v7")
    child = _child_digest(upstream.index, "linux/arm/v7")
    assert recorder.matching("GET", f"/v2/library/multi/manifests/{child}")


# -- process handling -------------------------------------------------------------------------


def test_run_command_kills_a_hung_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    started = time.monotonic()
    result = run_command(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], timeout=0.5)
    assert time.monotonic() - started < 10
    assert result.returncode == TIMEOUT_RETURNCODE
    assert "[clients] TIMEOUT" in result.stderr
    time.sleep(0.1)
    assert not _not_zombie(int(pidfile.read_text()))


def test_fixture_factory_reuses_a_dockerd_per_mirror_list(
    dockerd_factory: DockerdFactory, dockerd: Dockerd, upstream: Upstream
) -> None:
    assert dockerd_factory([upstream.recorder.url]) is dockerd
    assert dockerd_factory.start_times and max(dockerd_factory.start_times) < 30
    assert dockerd.info()["RegistryConfig"]["Mirrors"] == [upstream.recorder.url + "/"]
