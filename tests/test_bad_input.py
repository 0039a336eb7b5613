"""Bad input gets the spec's error codes, reaches no upstream, and writes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tests.support.catalog import Pushed
from tests.support.mirror import upstream
from tests.support.registry import Registry
from tests.test_api import error_of

ZEROS = "0" * 64


def stored_files(data_dir: Path) -> list[Path]:
    blobs = data_dir / "blobs"
    return [p for p in blobs.rglob("*") if p.is_file()] if blobs.exists() else []


@pytest.fixture
async def mirror(mirror_client: Any, registry: Registry, pushed: Pushed) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", registry.url, default=True)]
    )
    return client


async def raw_get(client: TestClient[Any, Any], raw_path: str) -> tuple[int, dict[str, str], bytes]:
    """GET a path exactly as written (HTTP client libraries normalize '..' away)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(f"GET {raw_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("raw_path", "status", "code"),
    [
        ("/v2/foo/../multi/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/%2e%2e/multi/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/foo//multi/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/Multi/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/team/Oci/blobs/sha256:" + ZEROS, 400, "NAME_INVALID"),
        ("/v2/" + "/".join(["abcdefghij"] * 30) + "/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/-lead/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/multi/manifests/-notatag", 400, "TAG_INVALID"),
        ("/v2/multi/manifests/" + "t" * 129, 400, "TAG_INVALID"),
        ("/v2/multi/blobs/sha256:xyz", 400, "DIGEST_INVALID"),
        ("/v2/multi/blobs/sha256:" + "A" * 64, 400, "DIGEST_INVALID"),
        ("/v2/multi/blobs/sha256:" + "0" * 63, 400, "DIGEST_INVALID"),
        ("/v2/multi/blobs/md5:" + "0" * 32, 400, "DIGEST_INVALID"),
        ("/v2/multi/blobs/notadigest", 400, "DIGEST_INVALID"),
        ("/v2/multi/manifests/sha256:" + "0" * 10, 400, "DIGEST_INVALID"),
        ("/v2/multi/referrers/latest", 400, "DIGEST_INVALID"),
        ("/v2/multi/tags/list?n=-1", 400, "UNSUPPORTED"),
        ("/v2/multi/manifests/latest?ns=unknown.example", 403, "DENIED"),
        ("/v2/multi/nothing/here", 404, "UNSUPPORTED"),
    ],
)
async def test_bad_requests_get_spec_errors_and_touch_nothing(
    mirror: TestClient[Any, Any], registry: Registry, raw_path: str, status: int, code: str
) -> None:
    got_status, headers, body = await raw_get(mirror, raw_path)
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["errors"][0]
    assert error["code"] == code
    assert "Traceback" not in error["message"]
    assert registry.requests() == []
    assert stored_files(mirror.data_dir) == []  # type: ignore[attr-defined]


async def test_upstream_manifest_over_4mib_is_refused(mirror_client: Any) -> None:
    # docker-registry itself refuses to store manifests over 4 MiB, so this upstream is
    # a stub (a mock by necessity) serving one, as a hostile or broken registry could.
    huge = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "annotations": {"pad": "x" * (4 * 1024 * 1024 + 10)},
        }
    ).encode()
    chunked = {"chunked": False}

    async def serve(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        if not chunked["chunked"]:
            return web.Response(body=huge, headers=headers)
        resp = web.StreamResponse(headers=headers)  # no Content-Length: the mirror must count
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for start in range(0, len(huge), 65536):
            await resp.write(huge[start : start + 65536])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", serve)
    async with TestServer(app, host="127.0.0.1") as server:
        mirror: TestClient[Any, Any] = await mirror_client(
            [upstream("docker.io", str(server.make_url("")).rstrip("/"), default=True)]
        )
        for use_chunked in (False, True):
            chunked["chunked"] = use_chunked
            resp = await mirror.get("/v2/library/big/manifests/latest")
            assert resp.status == 502
            error = await error_of(resp)
            assert error["code"] == "MANIFEST_INVALID"
            assert "limit" in error["message"]
        assert stored_files(mirror.data_dir) == []  # type: ignore[attr-defined]
        resp = await mirror.get("/v2/_catalog")
        assert (await resp.json()) == {"repositories": []}


async def test_upstream_manifest_not_matching_its_digest_is_refused(mirror_client: Any) -> None:
    # A stub upstream (mock by necessity: a real registry cannot be made to lie) that
    # answers every manifest-by-digest request with other bytes.
    body = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    )

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/vnd.oci.image.index.v1+json")

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", serve)
    async with TestServer(app, host="127.0.0.1") as server:
        mirror: TestClient[Any, Any] = await mirror_client(
            [upstream("docker.io", str(server.make_url("")).rstrip("/"), default=True)]
        )
        resp = await mirror.get(f"/v2/library/liar/manifests/sha256:{'ab' * 32}")
        assert resp.status == 502
        assert (await error_of(resp))["code"] == "DIGEST_INVALID"
        assert stored_files(mirror.data_dir) == []  # type: ignore[attr-defined]
