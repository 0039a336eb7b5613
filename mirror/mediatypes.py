"""Every media type the mirror knows, in one place."""

from __future__ import annotations

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYOUT_HEADER = "application/vnd.oci.layout.header.v1+json"

OCTET_STREAM = "application/octet-stream"

#: Manifest types the mirror caches and serves (schema1 is deprecated and refused).
MANIFEST_TYPES: tuple[str, ...] = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
LIST_TYPES: frozenset[str] = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
IMAGE_TYPES: frozenset[str] = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})


def accepted_manifest_types(accept_headers: list[str]) -> tuple[str, ...]:
    """The manifest types a client accepts, in a canonical order.

    A client that sends no known type (or ``*/*``) is taken to accept them all, as
    the upstream would answer such a client with whatever it has.
    """
    wanted: set[str] = set()
    for header in accept_headers:
        for part in header.split(","):
            media = part.split(";", 1)[0].strip().lower()
            if media in ("*/*", "application/*"):
                return MANIFEST_TYPES
            if media in MANIFEST_TYPES:
                wanted.add(media)
    if not wanted:
        return MANIFEST_TYPES
    return tuple(t for t in MANIFEST_TYPES if t in wanted)


def accept_key(types: tuple[str, ...]) -> str:
    """A short stable key for a set of accepted types (part of the tag cache key)."""
    if types == MANIFEST_TYPES:
        return "*"
    return ",".join(str(MANIFEST_TYPES.index(t)) for t in types)
