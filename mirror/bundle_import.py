"""`mirror import`: load a bundle (see :mod:`mirror.bundle`) into a data dir.

Nothing of a bundle becomes visible before all of it verified:

1. The tar is read as a stream (a pipe works: nothing seeks); the content manifest
   comes first and says what every other member must be.
2. Each blob member is hashed and its size checked while it is staged as a temp file in
   ``tmp/`` (named after this process's pid: a daemon's start-up cleaning spares it while
   the import runs, the next import or start-up removes it after a crash). Files the
   store already has are only hashed: a damaged bundle is refused all the same.
3. Only when every file verified are the staged files renamed into ``blobs/``. A file
   without a row is invisible to clients.
4. Per image, one transaction writes the rows: blobs, manifests, repository links,
   platforms, and the tag last. The tag maps to the original upstream top manifest (the
   filtered index, when the bundle has one, is loaded too and answers by digest).

Importing a bundle again finds every row and tag in place and changes nothing.
"""

from __future__ import annotations

import asyncio
import tarfile
import time
from dataclasses import dataclass
from typing import IO, BinaryIO

from mirror import errors, manifest
from mirror.bundle import (
    CONTENT_NAME,
    MAX_CONTENT_SIZE,
    BundleContent,
    BundleError,
    BundleImage,
    Descriptor,
    Progress,
)
from mirror.config import Settings, format_size
from mirror.db.records import ImportedImage
from mirror.db.store import MetadataStore
from mirror.mediatypes import IMAGE_TYPES, LIST_TYPES
from mirror.platforms import Platform, parse_platform
from mirror.reference import parse_digest
from mirror.registry.service import open_registry
from mirror.storage.blobs import CHUNK_SIZE, BlobStore, TempBlob

#: What a damaged or cut-off tar stream raises while it is read.
_TAR_ERRORS = (tarfile.TarError, EOFError)


@dataclass(frozen=True)
class ImportSummary:
    """What an import did."""

    images: int
    changed: int
    files: int  # new files published into the blob store
    bytes: int
    seconds: float


def read_content(stream: BinaryIO) -> tuple[bytes, BundleContent]:
    """The content manifest of a bundle, raw and parsed (its first member only; blocking)."""
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            raw = _content_bytes(tar)
    except _TAR_ERRORS as exc:
        raise BundleError(f"not a readable bundle: {exc}") from exc
    return raw, BundleContent.from_bytes(raw)


async def import_bundle(
    settings: Settings, stream: BinaryIO, progress: Progress, label: str
) -> ImportSummary:
    """Verify the whole bundle, then publish its files and record it image by image."""
    started = time.monotonic()
    async with open_registry(settings, check_lists=False) as registry:
        store, meta = registry.services.store, registry.services.meta
        staging = _Staging(store, progress, settings.max_manifest_size)
        try:
            bundle = await _verify(stream, staging, settings, progress, label)
            await staging.publish()
        finally:
            await staging.discard()
        changed = 0
        for image in bundle.images:
            changed += await _record(meta, image, staging.bodies, progress)
    return ImportSummary(
        len(bundle.images),
        changed,
        len(staging.staged),
        sum(t.written for t in staging.staged.values()),
        time.monotonic() - started,
    )


async def _verify(
    stream: BinaryIO, staging: _Staging, settings: Settings, progress: Progress, label: str
) -> BundleContent:
    try:
        tar = await asyncio.to_thread(tarfile.open, fileobj=stream, mode="r|*")
        try:
            bundle = await asyncio.to_thread(_content_of, tar)
            for registry in sorted({i.registry for i in bundle.images}):
                if settings.upstream(registry) is None:
                    progress.warn(
                        f"registry {registry} is not configured here: its images are "
                        "imported but served only once an [[upstreams]] entry names it"
                    )
            progress.start(f"verifying {label}", bundle.total_bytes)
            await staging.read(tar, bundle)
        finally:
            await asyncio.to_thread(tar.close)
    except _TAR_ERRORS as exc:
        raise BundleError(f"{label} is damaged or cut off: {exc}; nothing was imported") from exc
    _check_references(bundle, staging.bodies)
    files = bundle.files()
    progress.finish(
        f"verified {len(files)} files ({format_size(bundle.total_bytes)}) "
        f"of {len(bundle.images)} image(s)"
    )
    return bundle


def _content_of(tar: tarfile.TarFile) -> BundleContent:
    return BundleContent.from_bytes(_content_bytes(tar))


def _content_bytes(tar: tarfile.TarFile) -> bytes:
    member = tar.next()
    if member is None or member.name != CONTENT_NAME:
        first = member.name if member is not None else "nothing"
        raise BundleError(f"not a mirror bundle: it starts with {first}, not {CONTENT_NAME}")
    if not member.isfile() or member.size > MAX_CONTENT_SIZE:
        raise BundleError(f"{CONTENT_NAME} is not a file of at most {MAX_CONTENT_SIZE} bytes")
    reader = tar.extractfile(member)
    assert reader is not None
    return reader.read()


class _Staging:
    """Verified files waiting in tmp/ until the whole bundle checked out."""

    def __init__(self, store: BlobStore, progress: Progress, max_manifest: int) -> None:
        self._store = store
        self._progress = progress
        self._max_manifest = max_manifest
        self._temps: list[TempBlob] = []
        self.staged: dict[str, TempBlob] = {}  # verified, not yet published
        self.verified: set[str] = set()
        self.bodies: dict[str, bytes] = {}  # manifest bytes, for the rows

    async def read(self, tar: tarfile.TarFile, bundle: BundleContent) -> None:
        """Hash every blob member against the content manifest; stage what is new."""
        expected = bundle.files()
        manifests = {d.digest for i in bundle.images for d in i.manifests}
        loaded = manifests | {d.digest for i in bundle.images for d in i.blobs}
        while (member := await asyncio.to_thread(tar.next)) is not None:
            if not member.name.startswith("blobs/"):
                continue  # oci-layout, index.json: for OCI tools
            digest = ":".join(member.name.split("/")[1:3])
            found = expected.get(digest)
            if found is None:
                self._progress.warn(f"{member.name} is not in {CONTENT_NAME}: skipped")
                continue
            if digest in self.verified:
                continue
            if not member.isfile() or member.size != found.size:
                raise BundleError(
                    f"blob {digest} is {member.size} bytes in the bundle, "
                    f"{found.size} in {CONTENT_NAME}; nothing was imported"
                )
            reader = tar.extractfile(member)
            assert reader is not None
            # layout-only files (an OCI index over a Docker list) are checked, not loaded
            await self._take(reader, found, keep=digest in manifests, load=digest in loaded)
        missing = sorted(set(expected) - self.verified)
        if missing:
            raise BundleError(
                f"the bundle lacks {len(missing)} file(s) its {CONTENT_NAME} lists, "
                f"e.g. blob {missing[0]} (cut off?); nothing was imported"
            )

    async def _take(self, reader: IO[bytes], found: Descriptor, keep: bool, load: bool) -> None:
        digest = parse_digest(found.digest)
        if keep and found.size > self._max_manifest:
            raise BundleError(f"manifest {found.digest} is larger than max_manifest_size")
        temp: TempBlob | None = None
        if load and await self._store.size(digest) != found.size:
            temp = self._store.new_temp(digest)
            self._temps.append(temp)
        hasher = digest.hasher()
        body = bytearray()
        while chunk := await asyncio.to_thread(reader.read, CHUNK_SIZE):
            if temp is not None:
                await temp.write(chunk)
            else:
                hasher.update(chunk)
            if keep:
                body += chunk
            self._progress.advance(len(chunk))
        try:
            if temp is not None:
                await temp.verify(found.size)
                self.staged[found.digest] = temp
            elif hasher.hexdigest() != digest.hex:
                raise errors.BlobVerificationError(
                    found.digest, f"content hashes to {digest.algorithm}:{hasher.hexdigest()}"
                )
        except errors.BlobVerificationError as exc:
            raise BundleError(
                f"blob {found.digest} in the bundle is damaged ({exc.reason}); nothing was imported"
            ) from exc
        self.verified.add(found.digest)
        if keep:
            self.bodies[found.digest] = bytes(body)

    async def publish(self) -> None:
        """Move every staged file into the blob store (still invisible: no rows yet)."""
        for digest, temp in self.staged.items():
            await temp.publish(self._store.path(parse_digest(digest)))

    async def discard(self) -> None:
        """Remove whatever is still in tmp/ (idempotent; published files stay)."""
        for temp in self._temps:
            await temp.discard()


def _check_references(bundle: BundleContent, bodies: dict[str, bytes]) -> None:
    """Every manifest is what it says, and every image's config and layers are in the
    bundle: a tag recorded later never points at content that is not there."""
    files = bundle.files()
    for image in bundle.images:
        loaded = {d.digest for d in image.manifests}
        for wanted in (image.original, image.served):
            if wanted.digest not in loaded:
                raise BundleError(f"{image.name}: {wanted.digest} is not among its manifests")
        for d in image.manifests:
            doc = manifest.load(bodies[d.digest])
            if doc is None:
                raise BundleError(f"{image.name}: manifest {d.digest} is not JSON")
            if doc.get("mediaType", d.media_type) != d.media_type:
                raise BundleError(f"{image.name}: manifest {d.digest} is not {d.media_type}")
            if d.media_type not in IMAGE_TYPES:
                continue
            for child, _ in manifest.children(bodies[d.digest], d.media_type):
                if child not in files:
                    raise BundleError(
                        f"{image.name}: manifest {d.digest} needs blob {child}, "
                        "which the bundle lacks; nothing was imported"
                    )


async def _record(
    meta: MetadataStore, image: BundleImage, bodies: dict[str, bytes], progress: Progress
) -> int:
    """Write one image's rows in one transaction, tag last; 0 if all were there already."""
    kinds = {d.digest: "manifest" for d in image.manifests}
    kinds |= {d.digest: "blob" for d in image.blobs}
    target = image.original
    missing = await meta.unrecorded(image.registry, image.repository, kinds)
    current = (
        await meta.tag(image.registry, image.repository, image.tag, "*") if image.tag else None
    )
    tag_ok = image.tag is None or (current is not None and current.digest == target.digest)
    platforms = ", ".join(p or "unknown" for p, _ in image.platforms)
    if not missing and tag_ok:
        progress.finish(f"unchanged {image.name} [{platforms}]: already imported")
        return 0
    await meta.record_import(
        ImportedImage(
            upstream=image.registry,
            repository=image.repository,
            blobs=[(d.digest, d.size, d.media_type or None) for d in image.blobs],
            manifests=[
                (d.digest, d.media_type, d.size, manifest.children(bodies[d.digest], d.media_type))
                for d in image.manifests
            ],
            platforms=_platform_facts(image, bodies),
            tag=(image.tag, target.digest, target.media_type) if image.tag else None,
        )
    )
    moved = f" (was {current.digest})" if current is not None and not tag_ok else ""
    progress.finish(f"imported {image.name} -> {target.digest}{moved} [{platforms}]")
    return 1


def _platform_facts(
    image: BundleImage, bodies: dict[str, bytes]
) -> list[tuple[str, Platform, str]]:
    """(digest, platform, source): from the lists' entries, else as the bundle says."""
    facts: list[tuple[str, Platform, str]] = []
    for d in image.manifests:
        if d.media_type in LIST_TYPES:
            listed = manifest.platforms_of_list(bodies[d.digest], d.media_type)
            facts += [(digest, p, "index") for digest, p in listed]
    known = {digest for digest, _, _ in facts}
    for text, d in image.platforms:
        if text is not None and d.digest not in known:
            try:
                facts.append((d.digest, parse_platform(text), "config"))
            except ValueError as exc:
                raise BundleError(f"{image.name}: {exc}") from exc
    return facts
