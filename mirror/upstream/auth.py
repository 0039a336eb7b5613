"""Upstream authentication: WWW-Authenticate parsing and a bearer-token cache.

Tokens are cached per (upstream, scope) until shortly before they expire; concurrent
requests for the same scope share one token request.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import time
from dataclasses import dataclass, field

import aiohttp

from mirror import errors

log = logging.getLogger("mirror.upstream.auth")

_PARAM_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')

#: Tokens are dropped this many seconds before their stated expiry.
EXPIRY_MARGIN = 10.0
#: Token lifetime assumed when the token server does not say (the spec's default).
DEFAULT_EXPIRES_IN = 60.0


@dataclass(frozen=True)
class Challenge:
    """A parsed WWW-Authenticate challenge."""

    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str] = field(default_factory=dict)


def parse_www_authenticate(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or Basic); None if unusable."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3)).replace(
            '\\"', '"'
        )
        for m in _PARAM_RE.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def basic_header(username: str, password: str) -> str:
    """An Authorization header value for Basic auth."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenCache:
    """Bearer tokens of one upstream, per scope, shared by concurrent requests."""

    def __init__(
        self,
        registry: str,
        session: aiohttp.ClientSession,
        username: str | None,
        password: str | None,
    ) -> None:
        self.registry = registry
        self._session = session
        self._credentials = (username, password) if username and password else None
        self._tokens: dict[str, _Token] = {}
        self._pending: dict[str, asyncio.Future[str]] = {}

    def cached(self, scope: str) -> str | None:
        """A still-valid token for the scope, if any."""
        token = self._tokens.get(scope)
        if token and token.expires_at > time.monotonic():
            return token.value
        return None

    def invalidate(self, scope: str) -> None:
        """Forget a token the upstream refused."""
        self._tokens.pop(scope, None)

    async def get(self, challenge: Challenge, scope: str) -> str:
        """A token for the scope: cached, or fetched once for all concurrent askers."""
        if token := self.cached(scope):
            return token
        pending = self._pending.get(scope)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._pending[scope] = future
        try:
            value = await self._fetch(challenge, scope)
            future.set_result(value)
            return value
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: followers re-raise it themselves
            raise
        finally:
            del self._pending[scope]

    async def _fetch(self, challenge: Challenge, scope: str) -> str:
        realm = challenge.params.get("realm")
        if not realm:
            raise errors.MirrorError(
                errors.UNAUTHORIZED,
                f"upstream {self.registry} sent a bearer challenge with no realm",
            )
        query = {"scope": scope}
        if service := challenge.params.get("service"):
            query["service"] = service
        headers = {}
        if self._credentials:
            headers["Authorization"] = basic_header(*self._credentials)
        started = time.monotonic()
        try:
            async with self._session.get(realm, params=query, headers=headers) as resp:
                if resp.status in (401, 403):
                    raise errors.MirrorError(
                        errors.UNAUTHORIZED,
                        f"token server of upstream {self.registry} refused the mirror "
                        f"({resp.status}) for scope {scope}",
                    )
                if resp.status != 200:
                    raise errors.UpstreamUnavailable(
                        self.registry, f"token server answered {resp.status}"
                    )
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.UpstreamUnavailable(self.registry, f"token server: {exc!r}") from exc
        token = body.get("token") or body.get("access_token")
        if not isinstance(token, str) or not token:
            raise errors.UpstreamUnavailable(self.registry, "token server sent no token")
        expires_in = float(body.get("expires_in") or DEFAULT_EXPIRES_IN)
        lifetime = max(expires_in - EXPIRY_MARGIN, expires_in / 2)
        self._tokens[scope] = _Token(token, started + lifetime)
        log.info(
            "event=token_issued upstream=%s scope=%s expires_in=%s authenticated=%s",
            self.registry,
            scope,
            int(expires_in),
            bool(self._credentials),
        )
        return token
