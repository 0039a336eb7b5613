"""The benchmark's own data: random blobs and images, written to disk and pushed upstream.

Everything is incompressible (random bytes) and streamed through files, so a 1 GiB blob
never sits in memory. Layers of the pull images are real ``tar.gz`` layers (one random file
each) with the config's ``rootfs.diff_ids`` right, so any client could unpack them. They are
gzip with stored (level 0) deflate blocks: random bytes do not compress anyway, and level 1
would cost ~8 s of set-up per 320 MiB on this machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.images import DOCKER_CONFIG, DOCKER_LAYER, DOCKER_MANIFEST
from tests.support.images import push_blob as _push_blob
from tests.support.images import put_manifest as _put_manifest

MiB = 1024 * 1024
KiB = 1024
_CHUNK = 4 * MiB


@dataclass(frozen=True)
class BlobFile:
    """A blob on disk: path, digest and size."""

    path: Path
    digest: str
    size: int

    @property
    def hex(self) -> str:
        """The hex part of the digest."""
        return self.digest.split(":", 1)[1]


@dataclass
class BenchImage:
    """A pushed single-platform Docker schema2 image."""

    repo: str
    tag: str
    manifest: bytes
    config: BlobFile
    layers: list[BlobFile] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """``sha256:`` of the manifest bytes."""
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def total_size(self) -> int:
        """Bytes of config plus layers (what a pull downloads, manifest aside)."""
        return self.config.size + sum(layer.size for layer in self.layers)


def write_random_blob(path: Path, size: int, rng: random.Random) -> BlobFile:
    """Write ``size`` random bytes to ``path`` in chunks; returns its digest."""
    h = hashlib.sha256()
    left = size
    with path.open("wb") as out:
        while left > 0:
            chunk = rng.randbytes(min(_CHUNK, left))
            h.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return BlobFile(path, "sha256:" + h.hexdigest(), size)


class _HashingWriter(io.RawIOBase):
    """A write-only file object that hashes and counts what passes to the real file."""

    def __init__(self, out: io.BufferedWriter) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.hash.update(data)
        self.out.write(data)
        self.size += len(data)
        return len(data)


def write_layer(path: Path, content_size: int, rng: random.Random) -> tuple[BlobFile, str]:
    """A ``tar.gz`` layer holding one random file of ``content_size`` bytes.

    Returns the blob (compressed file) and the diff_id (sha256 of the uncompressed tar).
    """
    info = tarfile.TarInfo(f"bench-{rng.randbytes(6).hex()}.bin")
    info.size = content_size
    info.mode = 0o644
    info.mtime = 1704067200
    header = info.tobuf(format=tarfile.PAX_FORMAT)
    padding = b"\0" * ((-content_size) % 512)
    trailer = b"\0" * 1024
    raw_hash = hashlib.sha256()
    with path.open("wb") as out:
        sink = _HashingWriter(out)
        with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=0, mtime=0) as gz:

            def put(data: bytes) -> None:
                raw_hash.update(data)
                gz.write(data)

            put(header)
            left = content_size
            while left > 0:
                chunk = rng.randbytes(min(_CHUNK, left))
                put(chunk)
                left -= len(chunk)
            put(padding + trailer)
    blob = BlobFile(path, "sha256:" + sink.hash.hexdigest(), sink.size)
    return blob, "sha256:" + raw_hash.hexdigest()


def build_image(
    workdir: Path, repo: str, tag: str, layer_sizes: list[int], rng: random.Random
) -> BenchImage:
    """Write the layers, config and manifest of an image to ``workdir`` (not pushed yet)."""
    workdir.mkdir(parents=True, exist_ok=True)
    layers: list[BlobFile] = []
    diff_ids: list[str] = []
    for i, size in enumerate(layer_sizes):
        blob, diff_id = write_layer(workdir / f"layer{i}.tar.gz", size, rng)
        layers.append(blob)
        diff_ids.append(diff_id)
    config_obj = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Labels": {"org.mirror.bench": f"{repo}:{tag}"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z"} for _ in layer_sizes],
    }
    config_bytes = json.dumps(config_obj, indent=2).encode()
    config_path = workdir / "config.json"
    config_path.write_bytes(config_bytes)
    config = BlobFile(
        config_path, "sha256:" + hashlib.sha256(config_bytes).hexdigest(), len(config_bytes)
    )
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": config.size, "digest": config.digest},
        "layers": [{"mediaType": DOCKER_LAYER, "size": b.size, "digest": b.digest} for b in layers],
    }
    manifest = json.dumps(manifest_obj, indent=3).encode()
    return BenchImage(repo, tag, manifest, config, layers)


def push_file(registry_url: str, repo: str, blob: BlobFile) -> None:
    """Upload a blob file (streamed) unless the registry has it already."""
    _push_blob(registry_url, repo, blob.path, blob.digest)


def push_image(registry_url: str, image: BenchImage) -> str:
    """Push the blobs and the manifest (by tag); returns the manifest digest."""
    for blob in [image.config, *image.layers]:
        push_file(registry_url, image.repo, blob)
    return _put_manifest(registry_url, image.repo, image.tag, image.manifest, DOCKER_MANIFEST)


def upstream_blob_path(storage_dir: Path, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob's bytes."""
    hexpart = digest.split(":", 1)[1]
    return storage_dir / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
