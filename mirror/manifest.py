"""What a manifest references: children by digest, for repository links."""

from __future__ import annotations

import json
from typing import Any

from mirror import mediatypes

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
    return json.dumps(out, separators=(",", ":"), sort_keys=True).encode()
