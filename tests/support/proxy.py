"""A misbehaving reverse proxy to put between the mirror and its upstream registry.

`FaultyProxy` forwards every request to ``target`` (method, path, query, headers including
Authorization; response status and headers including WWW-Authenticate, Location,
Content-Length and Docker-Content-Digest), streaming bodies in both directions. Knobs, which a
test may flip at any time from any thread, inject faults:

* ``flip_blob_byte``: XOR one byte in the middle of ``GET /v2/*/blobs/*`` 200 bodies;
* ``throttle_bytes_per_sec``: slow blob response bodies down;
* ``fail_status``: answer everything with that status without forwarding;
* ``delay_seconds``: wait before answering;
* `stop()` / `start()`: vanish (connection refused) and come back on the same port.

``requests`` records what was asked, ``flipped`` which blob bodies were altered, and
``completed`` which blob bodies were relayed to the end.
"""

from __future__ import annotations

import asyncio
import re
import threading

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.net import ThreadedAiohttpServer, forwarding_app

HOP_BY_HOP = frozenset(
    {
        "connection",
        "expect",  # aiohttp's server already answered any 100-continue
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_BLOB_GET = re.compile(r"^/v2/.+/blobs/[^/]+$")
CHUNK = 64 * 1024


class FaultyProxy(ThreadedAiohttpServer):
    """Streaming reverse proxy to ``target`` with fault-injection knobs (see module doc).

    With ``preserve_host`` (default) the client's Host header is forwarded, so absolute
    Location URLs built by the upstream point back at the proxy.
    """

    def __init__(self, target: str, *, port: int = 0, preserve_host: bool = True) -> None:
        super().__init__(self._build_app, port=port, name="faulty-proxy", shutdown_timeout=0.5)
        self.target = target.rstrip("/")
        self.preserve_host = preserve_host
        self.flip_blob_byte: bool = False
        self.throttle_bytes_per_sec: int | None = None
        self.fail_status: int | None = None
        self.delay_seconds: float = 0.0
        self.requests: list[tuple[str, str]] = []
        self.flipped: list[str] = []
        self.completed: list[str] = []
        self._lock = threading.Lock()

    # -- test-facing helpers ----------------------------------------------------------------

    def count(self, method: str, path_contains: str = "") -> int:
        """Number of requests seen with ``method`` whose path contains ``path_contains``."""
        with self._lock:
            seen = list(self.requests)
        return sum(1 for m, p in seen if m == method.upper() and path_contains in p)

    def reset(self) -> None:
        """Clear recorded requests and switch every fault off."""
        with self._lock:
            self.requests.clear()
            self.flipped.clear()
            self.completed.clear()
        self.flip_blob_byte = False
        self.throttle_bytes_per_sec = None
        self.fail_status = None
        self.delay_seconds = 0.0

    # -- server -----------------------------------------------------------------------------

    def _build_app(self) -> web.Application:
        return forwarding_app(self._handle)

    async def _handle(
        self, request: web.Request, session: aiohttp.ClientSession
    ) -> web.StreamResponse:
        with self._lock:
            self.requests.append((request.method, request.path))
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if self.fail_status is not None:
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": "injected by FaultyProxy"}]},
                status=self.fail_status,
            )
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        if not self.preserve_host:
            headers.popall("Host", None)
        body = request.content.iter_chunked(CHUNK) if request.body_exists else None
        url = URL(self.target + request.raw_path, encoded=True)
        try:
            upstream = await session.request(
                request.method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            return web.json_response(
                {"errors": [{"code": "UNAVAILABLE", "message": f"upstream: {exc!r}"}]},
                status=502,
            )
        try:
            return await self._relay(request, upstream)
        finally:
            upstream.release()

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        is_blob = request.method == "GET" and _BLOB_GET.match(request.path) is not None
        flip_at = -1
        if is_blob and upstream.status == 200 and self.flip_blob_byte:
            flip_at = (upstream.content_length or 1) // 2
            with self._lock:
                self.flipped.append(request.path)
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        position = 0
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                if position <= flip_at < position + len(chunk):
                    mutable = bytearray(chunk)
                    mutable[flip_at - position] ^= 0xFF
                    chunk = bytes(mutable)
                position += len(chunk)
                if is_blob and self.throttle_bytes_per_sec:
                    await self._write_throttled(response, chunk)
                else:
                    await response.write(chunk)
            await response.write_eof()
            if is_blob:
                with self._lock:
                    self.completed.append(request.path)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass  # the client went away; nothing left to do
        except aiohttp.ClientPayloadError:
            # upstream died mid-body: cut the client connection so it sees a short body
            if request.transport is not None:
                request.transport.abort()
        return response

    async def _write_throttled(self, response: web.StreamResponse, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            rate = self.throttle_bytes_per_sec
            if not rate:
                await response.write(bytes(view))
                return
            piece = max(1, min(len(view), rate // 20))
            await response.write(bytes(view[:piece]))
            view = view[piece:]
            await asyncio.sleep(piece / rate)
