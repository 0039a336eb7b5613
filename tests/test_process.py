"""The `mirror` command as users run it: start-up, access log, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.catalog import Pushed
from tests.support.mirror import upstream
from tests.support.registry import Registry


async def test_access_log_has_one_line_per_request(
    mirror_factory: Any, registry: Registry, pushed: Pushed
) -> None:
    proc = mirror_factory([upstream("docker.io", registry.url, default=True)])
    layer = pushed.single.layers[0]
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(f"{proc.url}/v2/team/single/blobs/{layer.digest}") as resp:
                assert await resp.read() == layer.data
        async with session.get(f"{proc.url}/v2/team/single/manifests/nope") as resp:
            assert resp.status == 404
    log = proc.wait_log("path=/v2/team/single/manifests/nope")
    lines = [line for line in log.splitlines() if "event=request" in line and "/team/" in line]
    assert len(lines) == 3
    miss, hit, missing = lines
    for line, status, cache in ((miss, 200, "miss"), (hit, 200, "hit"), (missing, 404, "miss")):
        assert "method=GET" in line and f"status={status}" in line and f"cache={cache}" in line
        assert "bytes=" in line and "upstream_ms=" in line
    assert "upstream=docker.io" in miss and "upstream=-" in hit
    assert f"path=/v2/team/single/blobs/{layer.digest}" in miss


def test_bad_config_stops_startup_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[[upstreams]]\nregistry = "docker.io"\nurl = "https://x"\ntag_ttl = "soon"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mirror", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "upstreams[0].tag_ttl" in result.stderr
    assert "Traceback" not in result.stderr
