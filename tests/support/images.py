"""Random but real container images (Docker schema2 or OCI, single or multi-platform).

Layers are gzip-compressed tars of incompressible random files, configs carry correct
``rootfs.diff_ids``, so dockerd/containerd/podman can really unpack and run-check them.
Everything is deterministic when a seed (or `random.Random`) is given.

The synchronous `RegistryClient` (stdlib http.client; handles Bearer and Basic challenges)
and the module functions `push`, `push_blob`, `put_manifest`, `get_manifest`, `get_blob`,
`blob_exists` and `delete_manifest` talk to any registry API v2 endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import io
import json
import random
import re
import ssl
import tarfile
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any, BinaryIO

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"

CREATED = "2024-01-01T00:00:00Z"
Rng = random.Random | int | None


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _rng(rng: Rng) -> random.Random:
    return rng if isinstance(rng, random.Random) else random.Random(rng)


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes with a media type."""

    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        """``sha256:...`` of the data."""
        return sha256_digest(self.data)

    @property
    def size(self) -> int:
        """Length in bytes."""
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        """An OCI/Docker descriptor (mediaType, size, digest)."""
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass(frozen=True)
class Image:
    """A single-platform image: manifest bytes plus its config and layer blobs."""

    manifest: bytes
    media_type: str
    config: Blob
    layers: list[Blob]
    platform: dict[str, str]
    diff_ids: list[str] = field(default_factory=list)

    @property
    def manifest_digest(self) -> str:
        """Digest of the manifest bytes."""
        return sha256_digest(self.manifest)

    @property
    def digest(self) -> str:
        """Alias of `manifest_digest` (same name as on `ImageIndex`)."""
        return self.manifest_digest

    @property
    def blobs(self) -> list[Blob]:
        """Config then layers."""
        return [self.config, *self.layers]

    @property
    def platform_string(self) -> str:
        """``os/arch[/variant]``."""
        p = self.platform
        parts = [p["os"], p["architecture"]] + ([p["variant"]] if "variant" in p else [])
        return "/".join(parts)


@dataclass(frozen=True)
class ImageIndex:
    """A Docker manifest list or OCI index over several `Image`s."""

    manifest: bytes
    media_type: str
    images: list[Image]

    @property
    def digest(self) -> str:
        """Digest of the index bytes."""
        return sha256_digest(self.manifest)

    @property
    def manifest_digest(self) -> str:
        """Alias of `digest` (same name as on `Image`)."""
        return self.digest

    def image_for(self, platform: str) -> Image:
        """The child image for ``os/arch[/variant]``."""
        for image in self.images:
            if image.platform_string == platform:
                return image
        raise KeyError(platform)


def parse_platform(platform: str) -> dict[str, str]:
    """``linux/arm/v7`` -> ``{"os": "linux", "architecture": "arm", "variant": "v7"}``."""
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"bad platform {platform!r}")
    result = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        result["variant"] = parts[2]
    return result


def build_layer(size: int, rng: Rng = None, *, oci: bool = False) -> tuple[Blob, str]:
    """A gzip tar holding 1-3 random files totalling ``size`` bytes; returns (blob, diff_id)."""
    r = _rng(rng)
    nfiles = 1 if size < 4096 else min(3, 1 + size // (64 * 1024))
    sizes = [size // nfiles] * nfiles
    sizes[0] += size - sum(sizes)
    tag = r.randbytes(6).hex()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directory = tarfile.TarInfo(f"data-{tag}")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o755
        directory.mtime = 1704067200
        tar.addfile(directory)
        for i, n in enumerate(sizes):
            info = tarfile.TarInfo(f"data-{tag}/file{i}.bin")
            info.size = n
            info.mode = 0o644
            info.mtime = 1704067200
            tar.addfile(info, io.BytesIO(r.randbytes(n)))
    raw = buf.getvalue()
    compressed = gzip.compress(raw, compresslevel=1, mtime=0)
    return Blob(compressed, OCI_LAYER if oci else DOCKER_LAYER), sha256_digest(raw)


def _canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, indent=3).encode()


def build_image(
    platform: str = "linux/amd64",
    *,
    oci: bool = False,
    layers: int = 2,
    layer_size: int = 64 * 1024,
    label: str | None = None,
    rng: Rng = None,
) -> Image:
    """Build a runnable-shaped image for ``platform`` with ``layers`` random layers."""
    r = _rng(rng)
    plat = parse_platform(platform)
    built = [build_layer(layer_size, r, oci=oci) for _ in range(layers)]
    labels = {"org.mirror.test.platform": platform}
    if label is not None:
        labels["org.mirror.test.label"] = label
    config_obj: dict[str, Any] = {
        "architecture": plat["architecture"],
        "os": plat["os"],
        **({"variant": plat["variant"]} if "variant" in plat else {}),
        "created": CREATED,
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in built]},
        "history": [
            {"created": CREATED, "created_by": f"mirror-test layer {i}"} for i in range(layers)
        ],
    }
    config = Blob(_canonical(config_obj), OCI_CONFIG if oci else DOCKER_CONFIG)
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [b.descriptor() for b, _ in built],
    }
    return Image(
        manifest=_canonical(manifest_obj),
        media_type=media_type,
        config=config,
        layers=[b for b, _ in built],
        platform=plat,
        diff_ids=[d for _, d in built],
    )


def build_index(images: list[Image], *, oci: bool = False) -> ImageIndex:
    """A Docker manifest list (or OCI index) referencing ``images`` with platforms."""
    media_type = OCI_INDEX if oci else DOCKER_LIST
    obj = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": [
            {
                "mediaType": image.media_type,
                "size": len(image.manifest),
                "digest": image.manifest_digest,
                "platform": dict(image.platform),
            }
            for image in images
        ],
    }
    return ImageIndex(manifest=_canonical(obj), media_type=media_type, images=list(images))


def build_multiplatform(
    platforms: tuple[str, ...] | list[str] = ("linux/amd64", "linux/arm64", "linux/arm/v7"),
    *,
    oci: bool = False,
    rng: Rng = None,
    **kw: Any,
) -> ImageIndex:
    """An index over one image per platform; ``kw`` goes to `build_image`."""
    r = _rng(rng)
    return build_index([build_image(p, oci=oci, rng=r, **kw) for p in platforms], oci=oci)


# -- registry API v2 client ---------------------------------------------------------------------

ALL_MANIFEST_TYPES = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
Body = bytes | BinaryIO | None


class RegistryError(Exception):
    """An unexpected HTTP status from a registry."""

    def __init__(self, method: str, url: str, status: int, body: bytes) -> None:
        super().__init__(f"{method} {url} -> {status}: {body[:500]!r}")
        self.method, self.url, self.status, self.body = method, url, status, body


@dataclass
class Response:
    """Status, headers and body (empty when streamed into a sink) of one HTTP exchange."""

    status: int
    headers: Message
    body: bytes


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


def _merge_scopes(scopes: list[str]) -> list[str]:
    """Join scopes naming the same resource: ``r:a:pull`` + ``r:a:pull,push`` -> one scope."""
    merged: dict[str, list[str]] = {}
    for scope in " ".join(scopes).split():
        resource, _, actions = scope.rpartition(":")
        wanted = merged.setdefault(resource, [])
        wanted += [a for a in actions.split(",") if a and a not in wanted]
    return [f"{resource}:{','.join(actions)}" for resource, actions in merged.items()]


class RegistryClient:
    """A small synchronous registry client (http.client) with Bearer and Basic auth.

    On a 401 it answers the ``WWW-Authenticate`` challenge (fetching a token from the realm
    with Basic credentials when ``auth`` is given, anonymously otherwise) and retries once.
    Tokens are cached per repository for the client's lifetime.
    """

    def __init__(
        self, registry_url: str, *, auth: tuple[str, str] | None = None, timeout: float = 60.0
    ) -> None:
        self.base = registry_url.rstrip("/")
        self.auth = auth
        self.timeout = timeout
        self._authz: dict[str, str] = {}
        self.token_fetches = 0

    def _basic(self) -> str:
        assert self.auth is not None
        return "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()

    def _send(
        self, method: str, url: str, body: Body, headers: dict[str, str], sink: BinaryIO | None
    ) -> Response:
        parts = urllib.parse.urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            conn = http.client.HTTPSConnection(
                parts.netloc, timeout=self.timeout, context=ctx, blocksize=1 << 20
            )
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout, blocksize=1 << 20)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=body, headers=headers)
            resp = conn.getresponse()
            if sink is not None and resp.status == 200 and method != "HEAD":
                while chunk := resp.read(1 << 20):
                    sink.write(chunk)
                return Response(resp.status, resp.headers, b"")
            return Response(resp.status, resp.headers, resp.read())
        finally:
            conn.close()

    def _authorize(self, resp: Response, key: str, scope: str | None) -> bool:
        scheme, params = _challenge(resp.headers.get("WWW-Authenticate", ""))
        if scheme == "basic" and self.auth is not None:
            self._authz[key] = self._basic()
            return True
        if scheme != "bearer" or "realm" not in params:
            return False
        scopes = _merge_scopes([s for s in (params.get("scope"), scope) if s])
        query = [("service", params["service"])] if "service" in params else []
        query += [("scope", s) for s in scopes]
        url = params["realm"] + ("&" if "?" in params["realm"] else "?")
        headers = {"Authorization": self._basic()} if self.auth is not None else {}
        self.token_fetches += 1
        token_resp = self._send("GET", url + urllib.parse.urlencode(query), None, headers, None)
        if token_resp.status != 200:
            return False
        payload = json.loads(token_resp.body)
        self._authz[key] = "Bearer " + (payload.get("token") or payload["access_token"])
        return True

    def request(
        self,
        method: str,
        path: str,
        *,
        repo: str | None = None,
        actions: str = "pull",
        body: Body = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200,),
        sink: BinaryIO | None = None,
    ) -> Response:
        """Send ``method path`` (a path or absolute URL), answering one auth challenge.

        GET/HEAD redirects are followed. Raises `RegistryError` if the final status is not in
        ``expect`` (an empty ``expect`` accepts anything).
        """
        url = urllib.parse.urljoin(self.base + "/", path)
        key = repo or ""
        scope = f"repository:{repo}:{actions}" if repo else None
        start = body.tell() if body is not None and not isinstance(body, bytes) else 0
        reauthorized = False
        for _ in range(8):
            hdrs = dict(headers or {})
            same_host = urllib.parse.urlsplit(url).netloc == urllib.parse.urlsplit(self.base).netloc
            if key in self._authz and same_host:
                hdrs["Authorization"] = self._authz[key]
            resp = self._send(method, url, body, hdrs, sink)
            if resp.status == 401 and not reauthorized:
                reauthorized = True  # a cached token may lack this request's scope: once more
                if self._authorize(resp, key, scope):
                    if body is not None and not isinstance(body, bytes):
                        body.seek(start)
                    continue
            elif resp.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                continue
            break
        if expect and resp.status not in expect:
            raise RegistryError(method, url, resp.status, resp.body)
        return resp

    def blob_exists(self, repo: str, digest: str, actions: str = "pull") -> bool:
        """HEAD the blob (asking for a token with ``actions`` if challenged)."""
        path = f"/v2/{repo}/blobs/{digest}"
        resp = self.request("HEAD", path, repo=repo, actions=actions, expect=(200, 404))
        return resp.status == 200

    def push_blob(self, repo: str, data: bytes | Blob | Path, digest: str | None = None) -> str:
        """Monolithic upload (POST then PUT ?digest=) unless present; returns the digest."""
        if isinstance(data, Blob):
            data = data.data
        if isinstance(data, Path):
            size = data.stat().st_size
            if digest is None:
                with data.open("rb") as f:
                    digest = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        else:
            size, digest = len(data), digest or sha256_digest(data)
        if self.blob_exists(repo, digest, actions="pull,push"):
            return digest
        up = f"/v2/{repo}/blobs/uploads/"
        resp = self.request("POST", up, repo=repo, actions="pull,push", expect=(202,))
        location = urllib.parse.urljoin(self.base + up, resp.headers["Location"])
        location += ("&" if "?" in location else "?") + urllib.parse.urlencode({"digest": digest})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with contextlib.ExitStack() as stack:
            body = stack.enter_context(data.open("rb")) if isinstance(data, Path) else data
            self.request(
                "PUT", location, repo=repo, actions="pull,push", body=body, headers=headers,
                expect=(201,),
            )  # fmt: skip
        return digest

    def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """PUT a manifest under a tag or digest; returns its digest."""
        resp = self.request(
            "PUT", f"/v2/{repo}/manifests/{ref}", repo=repo, actions="pull,push", body=data,
            headers={"Content-Type": media_type}, expect=(201,),
        )  # fmt: skip
        return resp.headers.get("Docker-Content-Digest") or sha256_digest(data)

    def get_manifest(
        self, repo: str, ref: str, accept: str = ALL_MANIFEST_TYPES
    ) -> tuple[bytes, str, str]:
        """GET a manifest; returns (bytes, media type, digest)."""
        resp = self.request(
            "GET", f"/v2/{repo}/manifests/{ref}", repo=repo, headers={"Accept": accept}
        )
        digest = resp.headers.get("Docker-Content-Digest") or sha256_digest(resp.body)
        return resp.body, resp.headers.get("Content-Type", ""), digest

    def get_blob(self, repo: str, digest: str, *, sink: BinaryIO | None = None) -> bytes:
        """GET a blob (into ``sink`` when given, returning b"")."""
        return self.request("GET", f"/v2/{repo}/blobs/{digest}", repo=repo, sink=sink).body

    def delete_manifest(self, repo: str, ref: str) -> None:
        """DELETE a manifest (a tag is first resolved to its digest)."""
        if not ref.startswith("sha256:"):
            ref = self.get_manifest(repo, ref)[2]
        path = f"/v2/{repo}/manifests/{ref}"
        self.request("DELETE", path, repo=repo, actions="delete", expect=(202,))


Auth = tuple[str, str] | None


def blob_exists(registry_url: str, repo: str, digest: str, *, auth: Auth = None) -> bool:
    """True if the registry has the blob (HEAD)."""
    return RegistryClient(registry_url, auth=auth).blob_exists(repo, digest)


def push_blob(
    registry_url: str,
    repo: str,
    data: bytes | Blob | Path,
    digest: str | None = None,
    *,
    auth: Auth = None,
) -> str:
    """Upload one blob (bytes, `Blob` or a file path, streamed); returns its digest."""
    return RegistryClient(registry_url, auth=auth).push_blob(repo, data, digest)


def put_manifest(
    registry_url: str, repo: str, ref: str, data: bytes, media_type: str, *, auth: Auth = None
) -> str:
    """PUT arbitrary manifest bytes under ``ref``; returns the digest."""
    return RegistryClient(registry_url, auth=auth).put_manifest(repo, ref, data, media_type)


def get_manifest(
    registry_url: str, repo: str, ref: str, *, auth: Auth = None, accept: str = ALL_MANIFEST_TYPES
) -> tuple[bytes, str, str]:
    """GET a manifest; returns (bytes, media type, digest)."""
    return RegistryClient(registry_url, auth=auth).get_manifest(repo, ref, accept)


def get_blob(
    registry_url: str, repo: str, digest: str, *, auth: Auth = None, sink: BinaryIO | None = None
) -> bytes:
    """GET a blob's bytes (or stream them into ``sink``)."""
    return RegistryClient(registry_url, auth=auth).get_blob(repo, digest, sink=sink)


def delete_manifest(registry_url: str, repo: str, ref: str, *, auth: Auth = None) -> None:
    """Delete a manifest by digest (or by tag, resolved first)."""
    RegistryClient(registry_url, auth=auth).delete_manifest(repo, ref)


def push(
    registry_url: str,
    repo: str,
    ref: str,
    image: Image | ImageIndex,
    *,
    auth: Auth = None,
) -> str:
    """Push blobs and manifests (children of an index first, by digest); returns the digest.

    Synchronous (http.client), handles bearer-token and Basic challenges itself.
    """
    client = RegistryClient(registry_url, auth=auth)
    children = image.images if isinstance(image, ImageIndex) else [image]
    for child in children:
        for blob in child.blobs:
            client.push_blob(repo, blob.data, blob.digest)
        if isinstance(image, ImageIndex):
            client.put_manifest(repo, child.manifest_digest, child.manifest, child.media_type)
    client.put_manifest(repo, ref, image.manifest, image.media_type)
    return image.digest
