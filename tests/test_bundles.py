"""Bundles for air-gapped sites: `mirror export` from a mirror of a real registry, read by
skopeo; `mirror import` into an offline mirror while it runs, pulled by dockerd and
containerd; a kill -9 in the middle of an import; a damaged bundle; importing twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.support.clients import Containerd, Skopeo, describe
from tests.support.images import ImageIndex, build_image, build_multiplatform, push
from tests.support.mirror import MirrorProcess, render_config, upstream
from tests.support.mirror_fixtures import MirrorFactory
from tests.support.net import free_port
from tests.support.registry import Registry

if TYPE_CHECKING:
    from tests.support.client_fixtures import DockerdFactory
    from tests.support.images import Image

NAME = "docker.io/library/multi:latest"  # the ref name skopeo finds the image by
LABEL = "org.mirror.test.platform"
BIG_LAYER = 32 * 1024 * 1024


@dataclass
class World:
    hub: Registry
    multi: ImageIndex  # library/multi:latest, a 3-platform Docker manifest list
    big: Image  # team/big:v1, one arm64 image with a 32 MiB layer
    mirror: MirrorProcess  # A: online, in front of hub
    bundle: Path  # `mirror export multi --platform linux/arm64 -o FILE` from A
    exported: subprocess.CompletedProcess[str]
    big_bundle: Path  # `mirror export team/big:v1 -o -` from A


def mirror_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m mirror ARGS` as a user runs it."""
    cmd = [sys.executable, "-m", "mirror", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("bundles")
    hub = Registry(root / "hub").start()
    multi = build_multiplatform(rng=130, layers=2, layer_size=16 * 1024)
    big = build_image("linux/arm64", rng=131, layers=1, layer_size=BIG_LAYER)
    push(hub.url, "library/multi", "latest", multi)
    push(hub.url, "team/big", "v1", big)
    mirror = MirrorProcess(root / "a", [upstream("docker.io", hub.url, default=True)]).start()
    try:
        bundle = root / "multi-arm64.tar"
        config = str(mirror.config_path)
        # the workflow: prefetch one platform online, then export from the cache
        prefetched = mirror_cli(
            "prefetch", "--config", config, "multi", "--platform", "linux/arm64"
        )
        assert prefetched.returncode == 0, prefetched.stderr
        exported = mirror_cli(
            "export",
            "--config",
            config,
            "multi",
            "--platform",
            "linux/arm64",
            "-o",
            str(bundle),
            "--offline",
        )
        big_bundle = root / "big.tar"
        with big_bundle.open("wb") as out:  # through stdout: a stream, no seeking
            cmd = [sys.executable, "-m", "mirror", "export", "-c", config, "team/big:v1", "-o", "-"]
            made = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, timeout=120, check=False)
        assert made.returncode == 0, made.stderr.decode()
        assert b"exported 1 image(s)" in made.stderr  # the summary goes to stderr then
        yield World(hub, multi, big, mirror, bundle, exported, big_bundle)
    finally:
        mirror.stop()
        hub.stop()


@pytest.fixture
def offline_mirror(mirror_factory: MirrorFactory) -> MirrorProcess:
    """B: offline, its upstream an address nothing listens on."""
    dead = f"http://127.0.0.1:{free_port()}"
    return mirror_factory([upstream("docker.io", dead, default=True)], offline=True)


def members(bundle: Path) -> list[str]:
    with tarfile.open(bundle) as tar:
        return tar.getnames()


def digests_of(image: Image) -> set[str]:
    return {image.digest} | {b.digest for b in image.blobs}


def blob_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file())


def db_rows(mirror: MirrorProcess, table: str) -> list[tuple[Any, ...]]:
    return sorted(mirror.db_rows(table))


async def fetch(url: str, method: str = "GET") -> tuple[int, bytes]:
    accept = "application/vnd.docker.distribution.manifest.list.v2+json"
    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, headers={"Accept": accept}) as resp:
            return resp.status, await resp.read()


def import_into(mirror: MirrorProcess, bundle: Path) -> subprocess.CompletedProcess[str]:
    return mirror_cli("import", "--config", str(mirror.config_path), str(bundle))


@pytest.mark.clients
def test_export_is_an_oci_archive_of_the_chosen_platform(
    world: World, skopeo_client: Skopeo, tmp_path: Path
) -> None:
    assert world.exported.returncode == 0, world.exported.stderr
    assert "exported 1 image(s)" in world.exported.stdout
    names = members(world.bundle)
    assert names[:3] == ["mirror-bundle.json", "oci-layout", "index.json"]
    arm64 = world.multi.image_for("linux/arm64")
    blobs = {"sha256:" + n.rsplit("/", 1)[1] for n in names if n.startswith("blobs/")}
    assert digests_of(arm64) | {world.multi.digest} <= blobs  # the upstream index too
    for other in ("linux/amd64", "linux/arm/v7"):
        assert not digests_of(world.multi.image_for(other)) & blobs, other
        for digest in digests_of(world.multi.image_for(other)):  # never fetched upstream
            assert world.hub.count("GET", digest) == 0, (other, digest)

    ref = f"oci-archive:{world.bundle}:{NAME}"
    shown = skopeo_client.inspect(ref, override_arch="arm64")
    assert shown.returncode == 0, describe(shown, skopeo_client.log)
    assert json.loads(shown.stdout)["Labels"][LABEL] == "linux/arm64"
    dest = tmp_path / "copied"
    copied = skopeo_client.copy(ref, f"dir:{dest}", override_arch="arm64")
    assert copied.returncode == 0, describe(copied, skopeo_client.log)
    got = {p.name for p in dest.iterdir() if len(p.name) == 64}
    assert got == {b.digest.split(":")[1] for b in arm64.blobs}

    listed = mirror_cli("import", "--list", str(world.bundle))
    assert listed.returncode == 0, listed.stderr
    assert NAME in listed.stdout and "linux/arm64" in listed.stdout
    assert world.multi.digest in listed.stdout and arm64.digest in listed.stdout
    raw = json.loads(mirror_cli("import", "--list", "--json", str(world.bundle)).stdout)
    (image,) = raw["images"]
    assert image["original"]["digest"] == world.multi.digest
    assert image["served"]["digest"] != world.multi.digest  # the filtered index
    assert [p["platform"] for p in image["platforms"]] == ["linux/arm64"]


def test_offline_export_names_the_missing_blob(world: World, tmp_path: Path) -> None:
    amd64 = world.multi.image_for("linux/amd64")
    # A HEAD caches the manifest but, unlike a GET, reads none of its blobs ahead.
    url = f"{world.mirror.url}/v2/multi/manifests/{amd64.digest}"
    status, _ = asyncio.run(fetch(url, "HEAD"))
    assert status == 200  # the manifest is cached now, its blobs are not

    out = tmp_path / "amd64.tar"
    config = str(world.mirror.config_path)
    result = mirror_cli(
        "export", "-c", config, "multi", "--platform", "linux/amd64", "-o", str(out), "--offline"
    )
    assert result.returncode == 1, result.stderr
    assert f"{NAME}: blob {amd64.config.digest}" in result.stderr
    assert "offline" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial bundle left
    unknown = mirror_cli("export", "-c", config, "nosuch:1", "-o", str(out))
    assert unknown.returncode == 1 and "nosuch:1:" in unknown.stderr


@pytest.mark.clients
def test_import_into_a_running_offline_mirror_serves_the_platform(
    world: World,
    offline_mirror: MirrorProcess,
    dockerd_factory: DockerdFactory,
    containerd: Containerd,
) -> None:
    mirror = offline_mirror
    result = import_into(mirror, world.bundle)
    assert result.returncode == 0, result.stderr
    assert f"imported {NAME} -> {world.multi.digest}" in result.stderr

    dockerd = dockerd_factory([mirror.url])
    pulled = dockerd.pull("multi:latest", platform="linux/arm64")
    assert pulled.returncode == 0, describe(pulled, dockerd.log)
    assert dockerd.image_platform("multi:latest") == "linux/arm64"
    dockerd.rmi("multi:latest")
    # by the mirror's own name the CLI shows the registry's message
    refused = dockerd.pull(f"{mirror.host}/library/multi:latest", platform="linux/amd64")
    assert refused.returncode != 0
    assert "the mirror is offline" in refused.stderr, describe(refused)
    assert "cached platforms: linux/arm64" in refused.stderr
    # through registry-mirrors it fails too; dockerd then tries Docker Hub (its design, for
    # any mirror error), so the CLI shows that attempt and the daemon's log the reason
    seen = len(dockerd.log_path.read_text(errors="replace"))
    refused = dockerd.pull("multi:latest", platform="linux/amd64")
    assert refused.returncode != 0 and not dockerd.has_image("multi:latest")
    daemon_log = dockerd.log_path.read_text(errors="replace")[seen:]
    assert "the mirror is offline" in daemon_log, describe(refused, dockerd.log)
    assert "cached platforms: linux/arm64" in daemon_log
    by_digest = dockerd.pull(f"multi@{world.multi.digest}", platform="linux/arm64")
    assert by_digest.returncode == 0, describe(by_digest, dockerd.log)

    containerd.write_hosts_toml(None, "docker.io", mirror.host)
    got = containerd.pull(NAME, platform="linux/arm64")
    assert got.returncode == 0, describe(got, containerd.log)
    assert containerd.pulled_platforms(NAME) == ["linux/arm64"]
    ref = f"docker.io/library/multi@{world.multi.digest}"
    got = containerd.pull(ref, platform="linux/arm64")
    assert got.returncode == 0, describe(got, containerd.log)


def test_kill_9_during_import_leaves_nothing_visible(
    world: World, offline_mirror: MirrorProcess
) -> None:
    mirror = offline_mirror
    data = world.big_bundle.read_bytes()
    cmd = [sys.executable, "-m", "mirror", "import", "-c", str(mirror.config_path), "-"]
    log = (mirror.workdir / "import.log").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=log, stderr=log)
    log.close()
    assert proc.stdin is not None
    try:
        try:  # half the bundle, then the pipe stays open with nothing more in it
            proc.stdin.write(data[: len(data) // 2])
            proc.stdin.flush()
        except BrokenPipeError:
            proc.wait()
            raise AssertionError((mirror.workdir / "import.log").read_text()) from None
        staged = wait_for_staged(mirror.data_dir / "tmp", proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        close_quietly(proc.stdin)
    assert staged

    layer = world.big.layers[0].digest
    assert not mirror.blob_path(layer).exists()
    assert db_rows(mirror, "manifests") == [] and db_rows(mirror, "tags") == []
    for reference in ("v1", world.big.digest):
        status, _ = asyncio.run(fetch(f"{mirror.url}/v2/team/big/manifests/{reference}"))
        assert status == 404, reference

    again = import_into(mirror, world.big_bundle)
    assert again.returncode == 0, again.stderr
    assert "imported 1 of 1 image(s)" in again.stdout
    assert mirror.temp_files() == []  # the killed import's staged file is gone
    status, body = asyncio.run(fetch(f"{mirror.url}/v2/team/big/manifests/v1"))
    assert status == 200 and body == world.big.manifest
    status, body = asyncio.run(fetch(f"{mirror.url}/v2/team/big/blobs/{layer}"))
    assert status == 200 and body == world.big.layers[0].data


def wait_for_staged(tmp: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> list[Path]:
    """The import's temp files, once one has bytes in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the import ended before it was killed"
        mine = [p for p in tmp.iterdir() if p.name.startswith(f"{proc.pid}-")]
        if any(p.stat().st_size > 0 for p in mine):
            return mine
        time.sleep(0.02)
    raise AssertionError(f"no staged file in {tmp} within {timeout}s")


def close_quietly(stream: IO[bytes]) -> None:
    try:
        stream.close()
    except BrokenPipeError:
        pass


def test_damaged_bundle_is_refused_and_nothing_imported(
    world: World, offline_mirror: MirrorProcess, tmp_path: Path
) -> None:
    mirror = offline_mirror
    layer = world.multi.image_for("linux/arm64").layers[1].digest
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(world.bundle.read_bytes())
    with tarfile.open(damaged) as tar:
        member = tar.getmember(f"blobs/sha256/{layer.split(':')[1]}")
        offset = member.offset_data + member.size // 2
    with damaged.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))

    result = import_into(mirror, damaged)
    assert result.returncode == 1
    assert f"blob {layer} in the bundle is damaged" in result.stderr, result.stderr
    assert "nothing was imported" in result.stderr
    assert blob_files(mirror.data_dir) == []
    assert mirror.temp_files() == []
    for table in ("manifests", "tags", "blobs", "repository_links"):
        assert db_rows(mirror, table) == [], table


def test_importing_twice_changes_nothing(world: World, offline_mirror: MirrorProcess) -> None:
    mirror = offline_mirror
    first = import_into(mirror, world.bundle)
    assert first.returncode == 0, first.stderr
    assert "imported 1 of 1 image(s)" in first.stdout

    def snapshot() -> dict[str, Any]:
        tables = ("blobs", "manifests", "tags", "repository_links", "manifest_platforms")
        files = {p: p.stat().st_mtime_ns for p in blob_files(mirror.data_dir)}
        return {"files": files} | {t: db_rows(mirror, t) for t in tables}

    before = snapshot()
    second = import_into(mirror, world.bundle)
    assert second.returncode == 0, second.stderr
    assert "nothing changed" in second.stdout
    assert "already imported" in second.stderr
    assert snapshot() == before
    # with a config that does not name docker.io: a warning, and still nothing changes
    other = mirror.workdir / "ghcr-only.toml"
    settings = {"data_dir": str(mirror.data_dir), "upstreams": [upstream("ghcr.io", mirror.url)]}
    other.write_text(render_config(settings))
    third = mirror_cli("import", "--config", str(other), str(world.bundle))
    assert third.returncode == 0, third.stderr
    assert "warning: registry docker.io is not configured here" in third.stderr
    assert "nothing changed" in third.stdout
    assert snapshot() == before
    tags = db_rows(mirror, "tags")
    assert [(t[2], t[3], t[4]) for t in tags] == [("latest", "*", world.multi.digest)]
    listed = json.loads(mirror_cli("import", "--list", "--json", str(world.bundle)).stdout)
    filtered = listed["images"][0]["served"]["digest"]
    assert mirror.db_rows("manifests", "digest = ?", filtered)  # addressable by digest
