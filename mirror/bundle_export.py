"""`mirror export`: cached images (fetched through the registry services when missing) to a
bundle, streamed in constant memory to a file or a pipe. The format is in :mod:`mirror.bundle`.

Every reference is resolved before a byte is written, so a bad REF fails fast and leaves
nothing; a blob that cannot be had later stops the export (the CLI then removes the
partial file; on a pipe the tar simply ends without its trailer, which no reader accepts).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mirror import content, errors, manifest
from mirror.bundle import (
    CONTAINERD_NAME,
    CONTENT_NAME,
    REF_NAME,
    BundleContent,
    BundleError,
    BundleImage,
    Descriptor,
    Progress,
    blob_member,
)
from mirror.config import Settings, format_size
from mirror.mediatypes import IMAGE_TYPES, LIST_TYPES, OCI_INDEX, OCI_MANIFEST
from mirror.platforms import Platform
from mirror.reference import Digest, parse_digest
from mirror.registry.blobs import LocalBlob
from mirror.registry.manifests import Manifest
from mirror.registry.service import Registry, open_registry
from mirror.storage.blobs import CHUNK_SIZE


@dataclass
class _Resolved:
    """An exported reference: its plan, its content-manifest entry, and manifest bytes."""

    plan: content.ImagePlan
    entry: BundleImage
    bodies: dict[str, bytes]


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote."""

    images: int
    manifests: int
    blobs: int
    bytes: int
    seconds: float


async def export_bundle(
    settings: Settings,
    refs: list[str],
    platforms: list[Platform] | None,
    out: BinaryIO,
    progress: Progress,
) -> ExportSummary:
    """Resolve every reference (all before writing anything), then stream the bundle."""
    started = time.monotonic()
    async with open_registry(settings, check_lists=False) as registry:
        resolved: dict[str, _Resolved] = {}
        failures = []
        for ref in refs:
            try:
                found = await _resolve(registry, ref, platforms, progress)
            except (errors.MirrorError, ValueError) as exc:
                failures.append(f"{ref}: {_reason(exc)}")
                continue
            if found.entry.name in resolved:
                progress.warn(f"{ref}: {found.entry.name} is already in the bundle")
            resolved.setdefault(found.entry.name, found)
        if failures:
            raise BundleError("\n".join(failures))
        bundle = BundleContent(_now(), [r.entry for r in resolved.values()])
        sink = _TarSink(out, time.time())
        await asyncio.to_thread(sink.add_bytes, CONTENT_NAME, bundle.to_bytes())
        await asyncio.to_thread(sink.add_bytes, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        await asyncio.to_thread(sink.add_bytes, "index.json", _layout_index(bundle))
        for item in resolved.values():
            await _write_image(registry, sink, item, progress)
        await asyncio.to_thread(sink.close)
    files = bundle.files()
    manifests = {d.digest for i in bundle.images for d in [*i.manifests, i.layout]}
    return ExportSummary(
        len(bundle.images),
        len(manifests),
        len(files) - len(manifests),
        sum(d.size for d in files.values()),
        time.monotonic() - started,
    )


async def _resolve(
    registry: Registry, ref: str, platforms: list[Platform] | None, progress: Progress
) -> _Resolved:
    plan = await content.plan(registry, ref, platforms)
    served = plan.filtered or plan.top
    found: dict[str, Manifest] = {m.digest: m for m in plan.manifests()}
    blobs = {b.digest: Descriptor(b.digest, b.media_type, b.size) for b in plan.blobs}
    # Every entry of the served list goes in (attestations too): a self-contained layout.
    for listed in manifest.entries(served.body) if served.media_type in LIST_TYPES else []:
        digest = listed.get("digest")
        if not isinstance(digest, str) or digest in found:
            continue
        try:
            extra = await registry.manifests.proxy.by_digest(plan.route, parse_digest(digest))
        except errors.MirrorError as exc:
            progress.warn(f"{ref}: index entry {digest} left out: {_reason(exc)}")
            continue
        found[digest] = extra
        blobs.update({d.digest: d for d in _blob_descriptors(extra)})
    layout = _layout_manifest(served, plan.images[0][0] if len(plan.images) == 1 else None)
    bodies = {d: m.body for d, m in found.items()} | {layout.digest: layout.body}
    entry = BundleImage(
        name=plan.name,
        registry=plan.registry,
        repository=plan.repository,
        tag=None if plan.ref.digest else plan.ref.tag,
        original=_descriptor(plan.top),
        served=_descriptor(served),
        layout=_descriptor(layout),
        platforms=[(str(p) if p else None, _descriptor(m)) for p, m in plan.images],
        manifests=[_descriptor(m) for m in found.values()],
        blobs=list(blobs.values()),
    )
    return _Resolved(plan, entry, bodies)


def _blob_descriptors(found: Manifest) -> list[Descriptor]:
    if found.media_type not in IMAGE_TYPES:
        return []
    doc = manifest.load(found.body) or {}
    out = []
    for d in [doc.get("config"), *(doc.get("layers") or []), *(doc.get("blobs") or [])]:
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            out.append(
                Descriptor(d["digest"], str(d.get("mediaType") or ""), int(d.get("size") or 0))
            )
    return out


def _layout_manifest(served: Manifest, platform: Platform | None) -> Manifest:
    """What index.json points at: the served manifest when OCI-typed, else an OCI index
    over it (skopeo 1.9 looks Docker-typed entries up by name: it finds none)."""
    if served.media_type in (OCI_INDEX, OCI_MANIFEST):
        return served
    if served.media_type in LIST_TYPES:
        entries = manifest.entries(served.body)
    else:
        entries = [
            {
                "mediaType": served.media_type,
                "digest": served.digest,
                "size": len(served.body),
                **({"platform": platform.to_json()} if platform else {}),
            }
        ]
    body = manifest.canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    return Manifest(body, OCI_INDEX, str(Digest.of(body)))


def _layout_index(bundle: BundleContent) -> bytes:
    entries = [
        {
            **image.layout.to_json(),
            "annotations": {REF_NAME: image.name, CONTAINERD_NAME: image.name},
        }
        for image in bundle.images
    ]
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return json.dumps(doc, indent=2).encode() + b"\n"


async def _write_image(
    registry: Registry, sink: _TarSink, item: _Resolved, progress: Progress
) -> None:
    entry = item.entry
    progress.start(entry.name, entry.total_bytes)
    for d in [*entry.manifests, entry.layout]:
        if not sink.has(d.digest):
            await asyncio.to_thread(sink.add_blob_bytes, d.digest, item.bodies[d.digest])
        progress.advance(d.size)
    for d in entry.blobs:
        if sink.has(d.digest):
            progress.advance(d.size)
            continue
        try:
            local = await registry.blobs.get(item.plan.route, parse_digest(d.digest), whole=True)
            assert isinstance(local, LocalBlob)
            await asyncio.to_thread(sink.add_file, d, local.path, progress.advance)
        except (errors.MirrorError, BundleError, OSError) as exc:
            raise BundleError(f"{entry.name}: blob {d.digest}: {_reason(exc)}") from exc
    platforms = ", ".join(p or "unknown" for p, _ in entry.platforms)
    progress.finish(
        f"exported {entry.name} [{platforms}] {len(entry.blobs)} blobs "
        f"{format_size(entry.total_bytes)}"
    )


def _descriptor(found: Manifest) -> Descriptor:
    return Descriptor(found.digest, found.media_type, len(found.body))


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, errors.MirrorError) else str(exc)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _TarSink:
    """Tar members written to a stream in order, in constant memory (blocking calls: run
    them in a worker thread). The stream need not be seekable (``-o -``)."""

    def __init__(self, out: BinaryIO, mtime: float) -> None:
        # Plain "w" over a position-counting writer, not the "w|" stream mode: that one
        # buffers and, collected after a failure, would end a cut-off bundle with a
        # well-formed trailer. Here a failed export simply stops writing.
        self._tar = tarfile.TarFile(fileobj=_Appender(out), mode="w", format=tarfile.PAX_FORMAT)
        self._tar.copybufsize = CHUNK_SIZE  # type: ignore[attr-defined]  # (not in typeshed)
        self._mtime = int(mtime)
        self._written: set[str] = set()

    def has(self, digest: str) -> bool:
        return digest in self._written

    def _info(self, name: str, size: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, self._mtime
        return info

    def add_bytes(self, name: str, data: bytes) -> None:
        self._tar.addfile(self._info(name, len(data)), io.BytesIO(data))

    def add_blob_bytes(self, digest: str, data: bytes) -> None:
        self.add_bytes(blob_member(digest), data)
        self._written.add(digest)

    def add_file(self, d: Descriptor, path: Path, advance: Callable[[int], None]) -> None:
        with open(path, "rb") as f:
            size = f.seek(0, io.SEEK_END)
            f.seek(0)
            if size != d.size:
                raise BundleError(f"blob {d.digest} is {size} bytes; its manifest says {d.size}")
            self._tar.addfile(self._info(blob_member(d.digest), size), _Counting(f, advance))
        self._written.add(d.digest)

    def close(self) -> None:
        self._tar.close()


class _Counting:
    """A reader that reports how much was read (progress while tarfile copies)."""

    def __init__(self, raw: BinaryIO, advance: Callable[[int], None]) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._advance(len(data))
        return data


class _Appender:
    """A write-only stream that knows its position (tarfile asks; a pipe cannot tell)."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._offset = 0

    def write(self, data: bytes) -> int:
        self._out.write(data)
        self._offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self._offset

    def read(self, size: int = -1) -> bytes:
        raise io.UnsupportedOperation("write-only")

    def seek(self, pos: int) -> int:
        raise io.UnsupportedOperation("write-only")

    def close(self) -> None:
        self._out.flush()
