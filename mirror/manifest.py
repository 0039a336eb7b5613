"""What a manifest references: children by digest, for repository links."""

from __future__ import annotations

import json
from typing import Any

from mirror import mediatypes
from mirror.platforms import Platform, from_json

EMPTY_INDEX = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
)


def load(body: bytes) -> dict[str, Any] | None:
    """The manifest's JSON object, or None if it is not one."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def children(body: bytes, media_type: str) -> list[tuple[str, str]]:
    """(digest, kind) of everything a manifest points at: kind "manifest" or "blob"."""
    doc = load(body)
    if doc is None:
        return []
    found: list[tuple[str, str]] = []
    if media_type in mediatypes.LIST_TYPES or "manifests" in doc:
        found += [(d, "manifest") for d in _digests(doc.get("manifests"))]
    else:
        found += [(d, "blob") for d in _digests([doc.get("config")])]
        found += [(d, "blob") for d in _digests(doc.get("layers"))]
        found += [(d, "blob") for d in _digests(doc.get("blobs"))]  # OCI artifacts
    return found


def blob_sizes(body: bytes) -> list[tuple[str, int]]:
    """(digest, size) of an image manifest's config and layers, in that order (what a
    client fetches next); size 0 where the descriptor does not say."""
    doc = load(body) or {}
    found: list[tuple[str, int]] = []
    for d in [doc.get("config"), *(doc.get("layers") or [])]:
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            size = d.get("size")
            found.append((d["digest"], size if isinstance(size, int) and size >= 0 else 0))
    return found


def _digests(descriptors: Any) -> list[str]:

    if not isinstance(descriptors, list):
        return []
    return [
        d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)
    ]


def filter_referrers(body: bytes, artifact_type: str) -> bytes:
    """An OCI index keeping only the descriptors of one artifactType (canonical JSON)."""
    doc = load(body) or {}
    manifests = [
        d
        for d in doc.get("manifests") or []
        if isinstance(d, dict) and d.get("artifactType") == artifact_type
    ]
    out = {"schemaVersion": 2, "mediaType": mediatypes.OCI_INDEX, "manifests": manifests}
    return canonical(out)


def entries(body: bytes) -> list[dict[str, Any]]:
    """The descriptors of a list (empty for anything else)."""
    doc = load(body) or {}
    found = doc.get("manifests")
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


def platforms_of_list(body: bytes, media_type: str) -> list[tuple[str, Platform]]:
    """(child digest, platform) of every list entry that declares a usable platform."""
    if media_type not in mediatypes.LIST_TYPES:
        return []
    out = []
    for entry in entries(body):
        platform = from_json(entry.get("platform"))
        digest = entry.get("digest")
        if platform is not None and isinstance(digest, str) and platform.os != "unknown":
            out.append((digest, platform))
    return out


def canonical(doc: dict[str, Any]) -> bytes:
    """Deterministic bytes of a document the mirror makes (stable digest everywhere)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
