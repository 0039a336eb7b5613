"""Domain errors and the OCI distribution error-code table.

Every failure the mirror reports to a client is a :class:`MirrorError`; the HTTP
middleware renders it once, as ``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    """One row of the error table: the spec's code, a default message, an HTTP status."""

    code: str
    message: str
    status: int


# The codes of the OCI distribution spec (and Docker's registry API v2), with the
# statuses distribution answers them with.
BLOB_UNKNOWN = ErrorCode("BLOB_UNKNOWN", "blob unknown to registry", 404)
BLOB_UPLOAD_INVALID = ErrorCode("BLOB_UPLOAD_INVALID", "blob upload invalid", 400)
BLOB_UPLOAD_UNKNOWN = ErrorCode("BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", 404)
DIGEST_INVALID = ErrorCode("DIGEST_INVALID", "provided digest did not match uploaded content", 400)
MANIFEST_BLOB_UNKNOWN = ErrorCode("MANIFEST_BLOB_UNKNOWN", "manifest references unknown blob", 404)
MANIFEST_INVALID = ErrorCode("MANIFEST_INVALID", "manifest invalid", 400)
MANIFEST_UNKNOWN = ErrorCode("MANIFEST_UNKNOWN", "manifest unknown to registry", 404)
NAME_INVALID = ErrorCode("NAME_INVALID", "invalid repository name", 400)
NAME_UNKNOWN = ErrorCode("NAME_UNKNOWN", "repository name not known to registry", 404)
SIZE_INVALID = ErrorCode("SIZE_INVALID", "provided length did not match content length", 400)
TAG_INVALID = ErrorCode("TAG_INVALID", "manifest tag did not match URI", 400)
UNAUTHORIZED = ErrorCode("UNAUTHORIZED", "authentication required", 401)
DENIED = ErrorCode("DENIED", "requested access to the resource is denied", 403)
UNSUPPORTED = ErrorCode("UNSUPPORTED", "the operation is unsupported", 405)
TOOMANYREQUESTS = ErrorCode("TOOMANYREQUESTS", "too many requests", 429)
RANGE_INVALID = ErrorCode("RANGE_INVALID", "requested range not satisfiable", 416)
UNAVAILABLE = ErrorCode("UNAVAILABLE", "service unavailable", 503)
UNKNOWN = ErrorCode("UNKNOWN", "unknown error", 500)

ALL_CODES: dict[str, ErrorCode] = {
    c.code: c
    for c in (
        BLOB_UNKNOWN,
        BLOB_UPLOAD_INVALID,
        BLOB_UPLOAD_UNKNOWN,
        DIGEST_INVALID,
        MANIFEST_BLOB_UNKNOWN,
        MANIFEST_INVALID,
        MANIFEST_UNKNOWN,
        NAME_INVALID,
        NAME_UNKNOWN,
        SIZE_INVALID,
        TAG_INVALID,
        UNAUTHORIZED,
        DENIED,
        UNSUPPORTED,
        TOOMANYREQUESTS,
        RANGE_INVALID,
        UNAVAILABLE,
        UNKNOWN,
    )
}


class MirrorError(Exception):
    """An error with everything needed to render it to a registry client."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        *,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.status = status or code.status
        self.headers = dict(headers or {})
        super().__init__(f"{code.code}: {self.message}")

    def body(self) -> dict[str, Any]:
        """The spec's JSON error body."""
        entry: dict[str, Any] = {"code": self.code.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}


class UpstreamUnavailable(MirrorError):
    """The upstream could not be reached, timed out, or answered 5xx/429.

    The registry logic may answer from a stale cache instead of raising this.
    """

    def __init__(self, registry: str, reason: str, *, retry_after: str | None = None) -> None:
        headers = {"Retry-After": retry_after} if retry_after else None
        code = TOOMANYREQUESTS if retry_after is not None else UNAVAILABLE
        super().__init__(code, f"upstream {registry} unavailable: {reason}", headers=headers)
        self.registry = registry
        self.reason = reason


class UpstreamOffline(UpstreamUnavailable):
    """The upstream is configured offline: it is never contacted."""

    def __init__(self, registry: str) -> None:
        super().__init__(registry, "offline mode: the upstream is never contacted")


class BlobVerificationError(MirrorError):
    """Bytes from the upstream did not match the digest or size they were asked for."""

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(
            DIGEST_INVALID,
            f"upstream content for {digest} failed verification: {reason}",
            status=502,
        )
        self.digest = digest
        self.reason = reason


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""
