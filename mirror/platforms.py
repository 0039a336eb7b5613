"""Platforms (``os[(os.version)]/arch[/variant]``): parsing, normalization and matching.

Normalized as containerd does: x86_64 / x86-64 -> amd64, aarch64 / arm64/v8 -> arm64,
armhf / armv7l -> arm/v7, armel -> arm/v6, arm with no variant -> arm/v7, i386 -> 386.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from mirror import errors

_ARCH_ALIASES: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "x86-64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv6": ("arm", "v6"),
    "armv5": ("arm", "v5"),
    "arm": ("arm", ""),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "x86": ("386", ""),
    "386": ("386", ""),
}
_KNOWN_OS = {
    "linux",
    "windows",
    "darwin",
    "freebsd",
    "netbsd",
    "openbsd",
    "solaris",
    "illumos",
    "aix",
    "plan9",
    "dragonfly",
    "android",
    "ios",
    "js",
    "wasip1",
}
_TOKEN = re.compile(r"[a-z0-9_.-]+")
_OS_RE = re.compile(r"(?P<os>[a-z0-9]+)(?:\((?P<version>[^()]+)\))?")
ACCEPTED = (
    "os/arch[/variant], e.g. linux/amd64, linux/arm64, linux/arm/v7, windows(10.0.17763)/amd64"
)


@dataclass(frozen=True)
class Platform:
    """A normalized platform, as in an OCI index entry."""

    os: str
    architecture: str
    variant: str = ""
    os_version: str = ""
    features: tuple[str, ...] = field(default=())

    def __str__(self) -> str:
        os_part = f"{self.os}({self.os_version})" if self.os_version else self.os
        return "/".join(p for p in (os_part, self.architecture, self.variant) if p)

    @property
    def short(self) -> str:
        """``os/arch[/variant]`` without the OS version."""
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def to_json(self) -> dict[str, Any]:
        """The index entry's ``platform`` object (OCI field names)."""
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.features:
            out["os.features"] = list(self.features)
        if self.variant:
            out["variant"] = self.variant
        return out

    def matches(self, other: Platform) -> bool:
        """Whether ``other`` (a candidate) satisfies this requested platform.

        OS and architecture must agree; a requested variant must agree (an arm64
        request with no variant matches v8 too, normalization took care of that);
        a request without a variant takes any variant. OS version is not compared.
        """
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        return not self.variant or self.variant == other.variant


def normalize(os: str, architecture: str, variant: str = "", **extra: Any) -> Platform:
    """A Platform from raw fields, normalized."""
    arch_key = architecture.lower()
    if arch_key not in _ARCH_ALIASES and not _TOKEN.fullmatch(arch_key):
        raise ValueError(f"invalid architecture {architecture!r}")
    arch, implied = _ARCH_ALIASES.get(arch_key, (arch_key, ""))
    variant = (variant or implied).lower()
    if arch == "arm64" and variant == "v8":
        variant = ""
    if arch == "arm" and not variant:
        variant = "v7"
    if arch == "amd64" and variant == "v1":
        variant = ""
    features = tuple(extra.get("features") or ())
    return Platform(os.lower(), arch, variant, str(extra.get("os_version") or ""), features)


def parse_platform(text: str) -> Platform:
    """Parse ``os[(version)]/arch[/variant]``; ValueError names the value and the format."""
    parts = text.strip().split("/")
    match = _OS_RE.fullmatch(parts[0].lower()) if parts else None
    if not 2 <= len(parts) <= 3 or match is None or not all(parts):
        raise ValueError(f"invalid platform {text!r}: expected {ACCEPTED}")
    os_name = match.group("os")
    if os_name not in _KNOWN_OS:
        raise ValueError(f"invalid platform {text!r}: unknown OS {os_name!r}; expected {ACCEPTED}")
    try:
        return normalize(
            os_name,
            parts[1],
            parts[2] if len(parts) == 3 else "",
            os_version=match.group("version") or "",
        )
    except ValueError as exc:
        raise ValueError(f"invalid platform {text!r}: {exc}; expected {ACCEPTED}") from exc


def from_json(obj: Any) -> Platform | None:
    """A Platform from an index entry's or image config's fields (None if absent)."""
    if not isinstance(obj, dict):
        return None
    os_name, arch = obj.get("os"), obj.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    try:
        return normalize(
            os_name,
            arch,
            str(obj.get("variant") or ""),
            os_version=obj.get("os.version") or "",
            features=obj.get("os.features") or (),
        )
    except ValueError:
        return None


def require(text: str) -> Platform:
    """parse_platform for request input: a spec error instead of ValueError."""
    try:
        return parse_platform(text)
    except ValueError as exc:
        raise errors.MirrorError(errors.UNSUPPORTED, str(exc), status=400) from exc


def parse_flags(values: list[str] | None) -> list[Platform] | None:
    """--platform flags (repeatable) as platforms; None when none was given (all)."""
    from mirror.errors import ConfigError

    try:
        return [parse_platform(v) for v in values or []] or None
    except ValueError as exc:
        raise ConfigError(f"--platform: {exc}") from exc
