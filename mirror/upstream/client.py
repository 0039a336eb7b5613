"""UpstreamRegistry: the registry HTTP API v2 client for one upstream.

It never touches disk. It turns upstream statuses into domain errors, follows
redirects to blob storage without leaking the Authorization header to another
host, retries connection errors and 5xx with backoff, and relays 429.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from mirror import errors, stats
from mirror.config import UpstreamSettings
from mirror.mediatypes import MANIFEST_TYPES
from mirror.reference import Digest
from mirror.upstream.auth import Challenge, TokenCache, basic_header, parse_www_authenticate

log = logging.getLogger("mirror.upstream")

_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5
#: First retry delay; doubles on each further attempt.
BACKOFF = 0.2


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest as the upstream sent it, with the digest of its exact bytes."""

    body: bytes
    media_type: str
    digest: Digest


@dataclass(frozen=True)
class ManifestHead:
    """What a HEAD on a manifest told: its digest (if the upstream said), type, size."""

    digest: Digest | None
    media_type: str
    size: int | None


def _timeout(settings: UpstreamSettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=None,
        connect=settings.connect_timeout,
        sock_connect=settings.connect_timeout,
        sock_read=settings.read_timeout,
    )


def new_session(settings: UpstreamSettings) -> aiohttp.ClientSession:
    """The one client session (connection pool) of an upstream."""
    connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=_timeout(settings),
        auto_decompress=False,  # blobs are relayed byte-exact
        read_bufsize=1024 * 1024,  # fewer, larger reads on fast links (measured in bench/)
        headers={"User-Agent": "mirror/0.1 (pull-through cache)"},
    )


class UpstreamRegistry:
    """One upstream registry, over one aiohttp session."""

    def __init__(
        self, settings: UpstreamSettings, session: aiohttp.ClientSession, *, offline: bool = False
    ) -> None:
        self.settings = settings
        self.name = settings.registry
        self.offline = offline or settings.offline
        self._session = session
        self._base = URL(settings.url)
        self._challenge: Challenge | None = None
        self._tokens = TokenCache(self.name, session, settings.username, settings.secret())

    # --- the API ---------------------------------------------------------------------

    async def get_manifest(
        self, repo: str, ref: str, accept: tuple[str, ...], max_size: int
    ) -> FetchedManifest:
        """GET a manifest by tag or digest, refusing anything over ``max_size`` bytes."""
        path = f"/v2/{repo}/manifests/{ref}"
        async with self._open("GET", path, repo, headers=_accept(accept)) as resp:
            await self._check(resp, errors.MANIFEST_UNKNOWN, f"manifest {repo}:{ref}")
            if resp.content_length is not None and resp.content_length > max_size:
                raise _too_big(self.name, repo, ref, max_size)
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > max_size:
                    raise _too_big(self.name, repo, ref, max_size)
            media_type = _media_type(resp, bytes(body))
        return FetchedManifest(bytes(body), media_type, Digest.of(bytes(body)))

    async def head_manifest(self, repo: str, ref: str, accept: tuple[str, ...]) -> ManifestHead:
        """HEAD a manifest (Docker Hub does not count HEADs against pull limits)."""
        path = f"/v2/{repo}/manifests/{ref}"
        async with self._open("HEAD", path, repo, headers=_accept(accept)) as resp:
            await self._check(resp, errors.MANIFEST_UNKNOWN, f"manifest {repo}:{ref}")
            digest = _header_digest(resp)
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return ManifestHead(digest, media, resp.content_length)

    async def head_blob(self, repo: str, digest: Digest) -> int | None:
        """HEAD a blob in a repository: its size, or BLOB_UNKNOWN."""
        async with self._open("HEAD", f"/v2/{repo}/blobs/{digest}", repo) as resp:
            await self._check(resp, errors.BLOB_UNKNOWN, f"blob {digest} in {repo}")
            return resp.content_length

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: Digest) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET a blob; yields the 200 response to stream from (redirects followed)."""
        async with self._open("GET", f"/v2/{repo}/blobs/{digest}", repo) as resp:
            await self._check(resp, errors.BLOB_UNKNOWN, f"blob {digest} in {repo}")
            yield resp

    async def get_tags(self, repo: str, n: int | None, last: str | None) -> tuple[list[str], bool]:
        """One page of a repository's tags, and whether the upstream has more."""
        params = {k: str(v) for k, v in (("n", n), ("last", last)) if v is not None}
        async with self._open("GET", f"/v2/{repo}/tags/list", repo, params=params) as resp:
            await self._check(resp, errors.NAME_UNKNOWN, f"repository {repo}")
            body = await _json(resp, self.name)
            tags = body.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise errors.UpstreamUnavailable(self.name, "malformed tags/list answer")
            return tags, 'rel="next"' in resp.headers.get("Link", "")

    async def get_referrers(
        self, repo: str, digest: Digest, artifact_type: str | None, max_size: int
    ) -> tuple[bytes, bool] | None:
        """The referrers index of a subject, and whether the upstream filtered it.

        None when the upstream has no referrers API (the caller falls back to the
        tag schema).
        """
        params = {"artifactType": artifact_type} if artifact_type else None
        path = f"/v2/{repo}/referrers/{digest}"
        async with self._open("GET", path, repo, params=params) as resp:
            if resp.status in (404, 405, 400):
                await resp.read()
                return None
            await self._check(resp, errors.MANIFEST_UNKNOWN, f"referrers of {digest}")
            body = await resp.content.read(max_size + 1)
            if len(body) > max_size:
                raise _too_big(self.name, repo, f"referrers/{digest}", max_size)
            filtered = "artifactType" in resp.headers.get("OCI-Filters-Applied", "")
            return body, filtered

    # --- transport -------------------------------------------------------------------

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        path: str,
        repo: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send with auth, redirects and retries; yields the final response."""
        started = time.monotonic()
        try:
            resp = await self._with_retries(method, path, repo, headers or {}, params)
        finally:  # failures count too: the access log shows how long the upstream took to fail
            stats.add_upstream_time(self.name, time.monotonic() - started)

        try:
            yield resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The answer broke off while its body was being read.
            raise errors.UpstreamUnavailable(self.name, f"{type(exc).__name__}: {exc}") from exc
        finally:
            resp.release()

    async def _with_retries(
        self,
        method: str,
        path: str,
        repo: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> aiohttp.ClientResponse:
        if self.offline:
            raise errors.UpstreamOffline(self.name)
        attempts = self.settings.retries + 1

        reason = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                resp = await self._authorized(method, path, repo, headers, params)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if resp.status < 500 or resp.status == 501:
                    return resp
                reason = f"HTTP {resp.status}"
                resp.release()
            log.warning(
                "event=upstream_retry upstream=%s method=%s path=%s attempt=%d reason=%r",
                self.name,
                method,
                path,
                attempt + 1,
                reason,
            )
        raise errors.UpstreamUnavailable(self.name, reason)

    async def _authorized(
        self,
        method: str,
        path: str,
        repo: str,
        headers: dict[str, str],
        params: dict[str, str] | None,
    ) -> aiohttp.ClientResponse:
        scope = f"repository:{repo}:pull"
        auth = await self._auth_header(scope)
        resp = await self._follow(method, self._base.with_path(path), headers, params, auth)
        if resp.status != 401:
            return resp
        challenge = parse_www_authenticate(resp.headers.get("WWW-Authenticate", ""))
        resp.release()
        if challenge is None or challenge.scheme not in ("bearer", "basic"):
            raise errors.MirrorError(
                errors.UNAUTHORIZED, f"upstream {self.name} requires an unsupported authentication"
            )
        if auth is not None and challenge.scheme == "basic":
            raise self._refused(repo)
        self._challenge = challenge
        self._tokens.invalidate(scope)
        auth = await self._auth_header(scope)
        if auth is None:
            raise errors.MirrorError(
                errors.UNAUTHORIZED,
                f"upstream {self.name} requires credentials; set username and password",
            )
        resp = await self._follow(method, self._base.with_path(path), headers, params, auth)
        if resp.status == 401:
            resp.release()
            self._tokens.invalidate(scope)
            raise self._refused(repo)
        return resp

    def _refused(self, repo: str) -> errors.MirrorError:
        return errors.MirrorError(
            errors.UNAUTHORIZED, f"upstream {self.name} refused the mirror's access to {repo}"
        )

    async def _auth_header(self, scope: str) -> str | None:
        challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            username, password = self.settings.username, self.settings.secret()
            return basic_header(username, password) if username and password else None
        return "Bearer " + await self._tokens.get(challenge, scope)

    async def _follow(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        params: dict[str, str] | None,
        auth: str | None,
    ) -> aiohttp.ClientResponse:
        """Send, following redirects by hand: Authorization goes to the upstream's host only."""
        origin = (self._base.scheme, self._base.host, self._base.port)
        for _ in range(_MAX_REDIRECTS + 1):
            sent = dict(headers)
            if auth and (url.scheme, url.host, url.port) == origin:
                sent["Authorization"] = auth
            resp = await self._session.request(
                method, url, headers=sent, params=params, allow_redirects=False
            )
            if resp.status not in _REDIRECTS or "Location" not in resp.headers:
                return resp
            url = resp.url.join(URL(resp.headers["Location"]))
            params = None  # the Location carries its own query
            resp.release()
        raise errors.UpstreamUnavailable(self.name, "too many redirects")

    async def _check(
        self, resp: aiohttp.ClientResponse, not_found: errors.ErrorCode, what: str
    ) -> None:
        """Raise the domain error for a non-2xx answer."""
        if 200 <= resp.status < 300:
            return
        relayed = await _upstream_error(resp)
        if resp.status == 404:
            code = errors.ALL_CODES.get(relayed or "", not_found)
            if code.status != 404:
                code = not_found
            raise errors.MirrorError(code, f"{what} not found upstream at {self.name}")
        if resp.status == 429:
            raise errors.UpstreamUnavailable(
                self.name, "rate limited (429)", retry_after=resp.headers.get("Retry-After", "")
            )
        if resp.status == 403:
            raise errors.MirrorError(errors.DENIED, f"upstream {self.name} denied access to {what}")
        if resp.status == 401:
            raise self._refused(what)
        raise errors.MirrorError(
            errors.UNKNOWN, f"upstream {self.name} answered {resp.status} for {what}", status=502
        )


def _accept(types: tuple[str, ...]) -> dict[str, str]:
    return {"Accept": ", ".join(types or MANIFEST_TYPES)}


def _media_type(resp: aiohttp.ClientResponse, body: bytes) -> str:
    header = resp.headers.get("Content-Type", "").split(";")[0].strip()
    if header in MANIFEST_TYPES:
        return header
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError):
        declared = None
    return declared if isinstance(declared, str) and declared else header


def _header_digest(resp: aiohttp.ClientResponse) -> Digest | None:
    from mirror.reference import parse_digest

    value = resp.headers.get("Docker-Content-Digest")
    if not value:
        return None
    try:
        return parse_digest(value)
    except errors.MirrorError:
        return None


async def _json(resp: aiohttp.ClientResponse, name: str) -> dict[str, Any]:
    try:
        body = json.loads(await resp.content.read(16 * 1024 * 1024))
    except ValueError as exc:
        raise errors.UpstreamUnavailable(name, "malformed JSON answer") from exc
    if not isinstance(body, dict):
        raise errors.UpstreamUnavailable(name, "malformed JSON answer")
    return body


async def _upstream_error(resp: aiohttp.ClientResponse) -> str | None:
    """The first error code of an upstream's JSON error body, if any."""
    if resp.method == "HEAD":
        return None
    try:
        body = json.loads(await resp.content.read(64 * 1024))
        code = body["errors"][0]["code"]
    except (ValueError, KeyError, IndexError, TypeError, aiohttp.ClientError):
        return None
    return code if isinstance(code, str) else None


def _too_big(registry: str, repo: str, ref: str, limit: int) -> errors.MirrorError:
    return errors.MirrorError(
        errors.MANIFEST_INVALID,
        f"manifest {repo}:{ref} from upstream {registry} exceeds the {limit}-byte limit",
        status=502,
    )
