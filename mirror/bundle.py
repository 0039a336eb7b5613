"""Bundles for air-gapped sites: the format shared by `mirror export`
(:mod:`mirror.bundle_export`) and `mirror import` (:mod:`mirror.bundle_import`).

A bundle is a plain tar (``import`` also takes it gzipped) whose members come in this order:

``mirror-bundle.json``
    The content manifest (:class:`BundleContent`), first, so that an importer reading a
    stream knows what follows: per image the upstream registry, repository and tag, the
    original top digest and media type, the digest served (the filtered index when a
    subset of platforms was asked), the platforms with their manifest digests, and every
    manifest and blob with its size.
``oci-layout``, ``index.json``
    An OCI image layout: skopeo, containerd and other OCI tools read the bundle as it is.
``blobs/<alg>/<hex>``
    Every manifest (including the original upstream index when a subset of platforms was
    chosen, so pulls by the upstream digest still resolve after import), config and layer.

Reference names. Each ``index.json`` entry carries the fully qualified reference as
``org.opencontainers.image.ref.name`` (and as ``io.containerd.image.name``), e.g.
``docker.io/library/nginx:latest``, or ``docker.io/library/nginx@sha256:...`` for a
reference by digest. skopeo 1.9 compares the name after the file with that annotation
exactly (any string its reference grammar accepts, colons included), so::

    skopeo copy oci-archive:nginx.tar:docker.io/library/nginx:latest dir:/tmp/nginx

finds the image, while ``oci-archive:nginx.tar:nginx:latest`` or ``...:latest`` answer
"no descriptor found for reference". skopeo 1.9 also skips, when it looks a name up, every
entry that is not typed as an OCI manifest or index: for an image whose top manifest is a
Docker manifest list (or a single Docker manifest) the entry is therefore a small OCI index
the exporter makes over the same platform entries (``layout`` in the content manifest;
skopeo then picks the platform as usual). The Docker bytes stay in ``blobs/``, byte-exact
under their own digests, and are what `mirror import` loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from mirror import errors
from mirror.mediatypes import MANIFEST_TYPES
from mirror.reference import looks_like_registry, parse_digest, validate_name, validate_tag

CONTENT_NAME = "mirror-bundle.json"
FORMAT = "mirror-bundle"
VERSION = 1
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
#: The content manifest is read into memory: refuse absurd ones.
MAX_CONTENT_SIZE = 64 * 1024 * 1024


class BundleError(Exception):
    """A bundle could not be written or read; the message names the reference or blob."""


class Progress(Protocol):
    """Where export and import report what they do (a terminal bar or plain lines)."""

    def start(self, label: str, total: int) -> None:
        """A new unit of work (an image, a bundle) of ``total`` bytes begins."""

    def advance(self, amount: int) -> None:
        """``amount`` more bytes done (may be called from a worker thread)."""

    def finish(self, line: str) -> None:
        """The unit is done: one line saying what happened."""

    def warn(self, line: str) -> None:
        """Something the user should know that does not stop the work."""


@dataclass(frozen=True)
class Descriptor:
    """A file of the bundle: digest, media type, size."""

    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "mediaType": self.media_type, "size": self.size}

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Descriptor:
        """Parse and validate; BundleError names ``where``."""
        if not isinstance(obj, dict):
            raise BundleError(f"{CONTENT_NAME}: {where} is not an object")
        digest, media_type, size = obj.get("digest"), obj.get("mediaType"), obj.get("size")
        try:
            parse_digest(str(digest))
        except errors.MirrorError as exc:
            raise BundleError(f"{CONTENT_NAME}: {where}: {exc.message}") from exc
        if not isinstance(media_type, str) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{CONTENT_NAME}: {where}: bad mediaType or size")
        return cls(str(digest), media_type, size)


@dataclass
class BundleImage:
    """One exported reference, as the content manifest describes it."""

    name: str  # the fully qualified reference, also the index.json ref name
    registry: str
    repository: str
    tag: str | None
    original: Descriptor  # the upstream's top manifest
    served: Descriptor  # the filtered index when a subset was chosen, else the original
    layout: Descriptor  # what index.json points at (served, or an OCI index over it)
    platforms: list[tuple[str | None, Descriptor]]
    manifests: list[Descriptor]  # everything to load: original, served, images, attestations
    blobs: list[Descriptor]  # configs and layers

    @property
    def total_bytes(self) -> int:
        return sum(d.size for d in self.files())

    def files(self) -> list[Descriptor]:
        """Every blob file of the image in the bundle (layout index included), once."""
        found = {d.digest: d for d in [*self.manifests, self.layout, *self.blobs]}
        return list(found.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "registry": self.registry,
            "repository": self.repository,
            "tag": self.tag,
            "original": self.original.to_json(),
            "served": self.served.to_json(),
            "layout": self.layout.to_json(),
            "platforms": [{"platform": p, **d.to_json()} for p, d in self.platforms],
            "manifests": [d.to_json() for d in self.manifests],
            "blobs": [d.to_json() for d in self.blobs],
            "total_bytes": self.total_bytes,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> BundleImage:
        """Parse and validate one image entry."""
        if not isinstance(obj, dict):
            raise BundleError(f"{CONTENT_NAME}: {where} is not an object")
        try:
            registry, repository = str(obj["registry"]), validate_name(str(obj["repository"]))
            tag = None if obj.get("tag") is None else validate_tag(str(obj["tag"]))
            if not looks_like_registry(registry):
                raise BundleError(f"{CONTENT_NAME}: {where}: invalid registry {registry!r}")
            platforms = [
                (None if p.get("platform") is None else str(p["platform"]), p)
                for p in obj.get("platforms") or []
            ]
            image = cls(
                str(obj["name"]),
                registry,
                repository,
                tag,
                Descriptor.from_json(obj["original"], f"{where}.original"),
                Descriptor.from_json(obj["served"], f"{where}.served"),
                Descriptor.from_json(obj["layout"], f"{where}.layout"),
                [(p, Descriptor.from_json(d, f"{where}.platforms")) for p, d in platforms],
                [Descriptor.from_json(d, f"{where}.manifests") for d in obj["manifests"]],
                [Descriptor.from_json(d, f"{where}.blobs") for d in obj["blobs"]],
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise BundleError(f"{CONTENT_NAME}: {where}: missing or bad field {exc}") from exc
        except errors.MirrorError as exc:
            raise BundleError(f"{CONTENT_NAME}: {where}: {exc.message}") from exc
        for d in image.manifests:
            if d.media_type not in MANIFEST_TYPES:
                raise BundleError(f"{CONTENT_NAME}: {where}: {d.digest} is not a manifest type")
        return image


@dataclass
class BundleContent:
    """The content manifest: what a bundle holds, written first in the tar."""

    created: str
    images: list[BundleImage] = field(default_factory=list)

    def files(self) -> dict[str, Descriptor]:
        """Every blob file of the bundle by digest."""
        return {d.digest: d for image in self.images for d in image.files()}

    @property
    def total_bytes(self) -> int:
        return sum(d.size for d in self.files().values())

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "images": [i.to_json() for i in self.images],
            "total_bytes": self.total_bytes,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> BundleContent:
        """Parse and validate a content manifest; BundleError says what is wrong."""
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise BundleError(f"{CONTENT_NAME} is not JSON: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"{CONTENT_NAME} is not a mirror bundle manifest")
        if doc.get("version") != VERSION:
            raise BundleError(
                f"{CONTENT_NAME} has format version {doc.get('version')!r}; "
                f"this mirror reads version {VERSION}"
            )
        images = doc.get("images")
        if not isinstance(images, list):
            raise BundleError(f"{CONTENT_NAME}: images is not a list")
        parsed = [BundleImage.from_json(obj, f"images[{i}]") for i, obj in enumerate(images)]
        return cls(str(doc.get("created") or ""), parsed)


def blob_member(digest: str) -> str:
    """The tar member name of a blob: ``blobs/<alg>/<hex>``."""
    algorithm, _, hexpart = digest.partition(":")
    return f"blobs/{algorithm}/{hexpart}"
