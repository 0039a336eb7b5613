"""Repository names, tags and digests: parsing and validation by the spec's grammar."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mirror import errors

# OCI distribution spec, "Pulling manifests": the grammar of <name>, <reference>.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# A registry host as clients write it in a path prefix: has a dot or a port, or is localhost.
REGISTRY_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"(?::[0-9]+)?"
)

#: distribution's limit on a repository name, in characters.
MAX_NAME_LENGTH = 255

#: Supported digest algorithms and the length of their hex encoding.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest (``algorithm:hex``)."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of some bytes."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def parse_digest(text: str) -> Digest:
    """Parse and validate a digest; DIGEST_INVALID names what is wrong."""
    if not DIGEST_RE.fullmatch(text):
        raise errors.MirrorError(errors.DIGEST_INVALID, f"invalid digest {text!r}")
    algorithm, _, encoded = text.partition(":")
    if algorithm not in ALGORITHMS:
        raise errors.MirrorError(
            errors.DIGEST_INVALID,
            f"unsupported digest algorithm {algorithm!r}; supported: {', '.join(ALGORITHMS)}",
        )
    if len(encoded) != ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise errors.MirrorError(
            errors.DIGEST_INVALID,
            f"invalid {algorithm} digest {text!r}: want {ALGORITHMS[algorithm]} lowercase hex",
        )
    return Digest(algorithm, encoded)


def is_digest(reference: str) -> bool:
    """Whether a manifest reference is a digest (it has a colon) rather than a tag."""
    return ":" in reference


def validate_name(name: str) -> str:
    """Validate a repository name; NAME_INVALID says why."""
    if len(name) > MAX_NAME_LENGTH:
        raise errors.MirrorError(
            errors.NAME_INVALID,
            f"repository name is {len(name)} characters; the limit is {MAX_NAME_LENGTH}",
        )
    if not NAME_RE.fullmatch(name):
        raise errors.MirrorError(
            errors.NAME_INVALID,
            f"invalid repository name {name!r}: components must match {_COMPONENT}",
        )
    return name


def validate_tag(tag: str) -> str:
    """Validate a tag; TAG_INVALID (MANIFEST_UNKNOWN-compatible 400) says why."""
    if not TAG_RE.fullmatch(tag):
        raise errors.MirrorError(
            errors.TAG_INVALID,
            f"invalid tag {tag!r}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}",
        )
    return tag


def looks_like_registry(component: str) -> bool:
    """Whether a first path component names a registry host (docker's rule)."""
    return bool(
        ("." in component or ":" in component or component == "localhost")
        and REGISTRY_RE.fullmatch(component)
    )


@dataclass(frozen=True)
class ImageRef:
    """``[registry/]name[:tag][@digest]`` as users write it (registry None: the default)."""

    registry: str | None
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What to ask the manifests endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}" if self.registry else self.repository
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_ref(text: str) -> ImageRef:
    """Parse an image reference; MirrorError (NAME_INVALID, TAG_INVALID...) says what is wrong."""
    rest, _, digest = text.strip().partition("@")
    if digest:
        parse_digest(digest)
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], validate_tag(rest[colon + 1 :])
    first, _, remainder = rest.partition("/")
    registry = None
    if remainder and looks_like_registry(first):
        registry, rest = first.lower(), remainder
    validate_name(rest)
    if not tag and not digest:
        tag = "latest"
    return ImageRef(registry, rest, tag, digest or None)
