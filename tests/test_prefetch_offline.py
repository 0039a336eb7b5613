"""Prefetch (CLI), [[sync]] in the daemon, pins, and offline mode, with a real upstream."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.images import ImageIndex, build_multiplatform, push
from tests.support.mirror import MirrorProcess, upstream
from tests.support.registry import Registry


@dataclass
class World:
    hub: Registry
    nginx: ImageIndex  # docker.io/library/nginx:latest, 3 platforms


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hub = Registry(tmp_path_factory.mktemp("prefetch-hub")).start()
    nginx = build_multiplatform(rng=130, layers=2, layer_size=8192)
    push(hub.url, "library/nginx", "latest", nginx)
    try:
        yield World(hub, nginx)
    finally:
        hub.stop()


def cli(
    config: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mirror", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def arm64_digests(index: ImageIndex, platform: str) -> list[str]:
    image = index.image_for(platform)
    return [image.digest] + [b.digest for b in image.blobs]


def test_prefetch_fetches_only_the_platform_then_nothing(world: World, mirror_factory: Any) -> None:
    proc: MirrorProcess = mirror_factory([upstream("docker.io", world.hub.url, default=True)])
    world.hub.reset_counts()
    first = cli(proc.config_path, "prefetch", "nginx", "--platform", "linux/arm64")
    assert first.returncode == 0, first.stderr
    assert "prefetched docker.io/library/nginx:latest platforms=linux/arm64" in first.stderr
    for digest in arm64_digests(world.nginx, "linux/arm64"):
        assert world.hub.count("GET", digest) == 1, digest
    for platform in ("linux/amd64", "linux/arm/v7"):
        for digest in arm64_digests(world.nginx, platform):
            assert world.hub.count("GET", digest) == 0, (platform, digest)
    # the running daemon serves what the prefetch put in the shared data dir, at once
    layer = world.nginx.image_for("linux/arm64").layers[0]
    body = asyncio.run(_get(f"{proc.url}/v2/nginx/blobs/{layer.digest}"))
    assert body == layer.data
    assert world.hub.count("GET", layer.digest) == 1

    world.hub.reset_counts()
    second = cli(
        proc.config_path, "prefetch", "docker.io/library/nginx:latest", "--platform", "linux/arm64"
    )
    assert second.returncode == 0, second.stderr
    assert "nothing to download: everything was already cached" in second.stderr
    assert world.hub.count("GET", "/blobs/") == 0


async def _get(url: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.read()


def test_prefetch_exit_codes_name_what_failed(
    world: World, tmp_path: Path, mirror_factory: Any
) -> None:
    proc: MirrorProcess = mirror_factory([upstream("docker.io", world.hub.url, default=True)])
    result = cli(
        proc.config_path,
        "prefetch",
        "nginx",
        "Bad/Name",
        "nginx:nope",
        "quay.io/x/y",
        "--platform",
        "linux/arm64",
    )
    assert result.returncode == 1
    assert "failed Bad/Name:" in result.stderr and "invalid repository name" in result.stderr
    assert "failed nginx:nope: manifest library/nginx:nope not found upstream" in result.stderr
    assert "failed quay.io/x/y: quay.io/x/y: registry 'quay.io'" in result.stderr
    assert "summary: images=1 failed=3" in result.stderr
    missing = cli(proc.config_path, "prefetch", "nginx", "--platform", "linux/s390x")
    assert missing.returncode == 1
    assert "has no linux/s390x; it has: linux/amd64, linux/arm/v7, linux/arm64" in missing.stderr
    by_digest = cli(
        proc.config_path, "prefetch", f"nginx@{world.nginx.digest}", "--platform", "linux/amd64"
    )
    assert by_digest.returncode == 0, by_digest.stderr
    assert f"prefetched docker.io/library/nginx@{world.nginx.digest} platforms=linux/amd64" in (
        by_digest.stderr
    )
    bad = cli(proc.config_path, "prefetch", "nginx", "--platform", "linux")

    assert bad.returncode == 2 and "--platform: invalid platform 'linux'" in bad.stderr
    listed = tmp_path / "refs.txt"
    listed.write_text("# images for the edge\nnginx   # the web server\n\n")
    from_file = cli(proc.config_path, "prefetch", "--from-file", str(listed), "--pin")
    assert from_file.returncode == 0, from_file.stderr
    assert "platforms=linux/amd64,linux/arm64,linux/arm/v7" in from_file.stderr
    pinned = {row[0] for row in proc.db_rows("pins")}
    everything = {world.nginx.digest}
    for image in world.nginx.images:
        everything |= set(arm64_digests(world.nginx, image.platform_string))
    assert everything <= pinned


def test_progress_bars_on_a_terminal_plain_lines_otherwise(
    world: World, mirror_factory: Any
) -> None:
    proc: MirrorProcess = mirror_factory([upstream("docker.io", world.hub.url, default=True)])
    plain = cli(proc.config_path, "prefetch", "nginx", "--platform", "linux/amd64")
    assert plain.returncode == 0
    assert "━" not in plain.stderr and "\x1b[" not in plain.stderr
    assert plain.stderr.count("prefetched ") == 1
    # on a pseudo-terminal: a rich progress bar per image
    main, sub = pty.openpty()
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mirror",
            "prefetch",
            "nginx",
            "--platform",
            "linux/arm/v7",
            "--config",
            str(proc.config_path),
        ],
        stdin=sub,
        stdout=sub,
        stderr=sub,
        env={**os.environ, "COLUMNS": "120"},
    )
    os.close(sub)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert child.wait(60) == 0
    text = output.decode(errors="replace")
    assert "━" in text and "blobs" in text and "docker.io/library/nginx:latest" in text


def test_sync_entry_keeps_content_fresh_in_the_background(
    mirror_factory: Any, registry_factory: Any
) -> None:
    hub: Registry = registry_factory()
    index = build_multiplatform(("linux/amd64", "linux/arm64"), rng=131, layers=1, layer_size=4096)
    push(hub.url, "team/app", "v1", index)
    proc: MirrorProcess = mirror_factory(
        [upstream("docker.io", hub.url, default=True, tag_ttl="0s")],
        sync=[
            {"refs": ["team/app:v1"], "platforms": ["linux/arm64"], "interval": "1s", "pin": True}
        ],
    )
    proc.wait_log("event=sync_run sync=0 refs=1 failed=0")
    arm = index.image_for("linux/arm64")
    for blob in arm.blobs:
        assert proc.blob_path(blob.digest).exists()
    for blob in index.image_for("linux/amd64").blobs:
        assert not proc.blob_path(blob.digest).exists()
    assert {row[0] for row in proc.db_rows("pins")} >= {b.digest for b in arm.blobs}
    # a later run finds everything cached and fetches nothing
    proc.wait_log("failed=0 fetched=0 cached=")


async def test_offline_mode_serves_cache_and_names_cached_platforms(
    world: World, tmp_path: Path
) -> None:
    online = MirrorProcess(tmp_path / "m", [upstream("docker.io", world.hub.url, default=True)])
    result = await asyncio.to_thread(
        cli, _write(online), "prefetch", "nginx", "--platform", "linux/arm64"
    )
    assert result.returncode == 0, result.stderr
    online.settings["offline"] = True
    online.settings["upstreams"][0]["tag_ttl"] = "0s"  # offline: no TTL expiry at all
    await asyncio.to_thread(online.start)
    world.hub.reset_counts()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{online.url}/v2/nginx/manifests/latest"
            async with session.get(url) as resp:
                assert resp.status == 200
                assert await resp.read() == world.nginx.manifest
            amd = world.nginx.image_for("linux/amd64").digest
            async with session.get(f"{online.url}/v2/nginx/manifests/{amd}") as resp:
                assert resp.status == 404
                error = (await resp.json())["errors"][0]
            assert error["code"] == "MANIFEST_UNKNOWN"
            assert "offline" in error["message"] and "(linux/amd64)" in error["message"]
            assert "cached platforms: linux/arm64" in error["message"]
            async with session.get(f"{online.url}/v2/nginx/manifests/other") as resp:
                assert resp.status == 404
                assert "offline" in (await resp.json())["errors"][0]["message"]
            blob = world.nginx.image_for("linux/amd64").layers[0].digest
            async with session.get(f"{online.url}/v2/nginx/blobs/{blob}") as resp:
                assert resp.status == 404
                error = (await resp.json())["errors"][0]
            assert error["code"] == "BLOB_UNKNOWN" and "offline" in error["message"]
    finally:
        online.stop()
    assert world.hub.requests() == []  # never contacted


def _write(proc: MirrorProcess) -> Path:
    from tests.support.mirror import render_config

    proc.config_path.write_text(render_config(proc.settings))
    return proc.config_path
