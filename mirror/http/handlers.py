"""Thin handlers: parse the request, call a registry service, shape the response."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

from aiohttp import web

from mirror import errors
from mirror.http.keys import PORT_VIEWS, REGISTRY, SENDER
from mirror.http.middleware import API_VERSION
from mirror.mediatypes import OCI_INDEX, OCTET_STREAM, accepted_manifest_types
from mirror.policy import Route
from mirror.reference import parse_digest
from mirror.registry.blobs import LocalBlob, StreamingBlob
from mirror.registry.manifests import Manifest
from mirror.registry.tags import Page

log = logging.getLogger("mirror.http")

_READ_METHODS = ("GET", "HEAD")
_BAD_PATH = re.compile(r"(^|/)\.{1,2}(/|$)|//|%")
#: Blobs are immutable: clients and proxies in between may keep them.
_IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Endpoint:
    """What a /v2/<tail> path asks for."""

    name: str
    kind: str  # manifests | blobs | referrers | tags | uploads
    reference: str = ""


def parse_endpoint(tail: str) -> Endpoint:
    """Split ``<name>/<kind>/<reference>`` from the right (names may contain anything)."""
    if tail.endswith("/tags/list"):
        return Endpoint(tail[: -len("/tags/list")], "tags")
    if "/blobs/uploads" in tail:
        return Endpoint(tail.split("/blobs/uploads", 1)[0], "uploads")
    name, _, rest = tail.rpartition("/")
    name, _, kind = name.rpartition("/")
    if name and kind in ("manifests", "blobs", "referrers") and rest:
        return Endpoint(name, kind, rest)
    raise errors.MirrorError(errors.UNSUPPORTED, f"no such endpoint: /v2/{tail}", status=404)


async def base(request: web.Request) -> web.Response:
    """GET /v2/: the API version check every client starts with."""
    return web.json_response({}, headers=API_VERSION)


async def catalog(request: web.Request) -> web.Response:
    """GET /v2/_catalog: what is cached."""
    n, last = _pagination(request)
    page = await request.app[REGISTRY].catalog.list(request.query.get("ns"), n, last)
    return _page_response(request, {"repositories": page.items}, page, n)


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every /v2/<name>/... endpoint."""
    if _BAD_PATH.search(request.raw_path.split("?", 1)[0]):
        raise errors.MirrorError(
            errors.NAME_INVALID,
            "path segments '.', '..', '//' and percent-escapes are not allowed in repository names",
        )
    endpoint = parse_endpoint(request.match_info["tail"])
    if endpoint.kind == "uploads" or request.method not in _READ_METHODS:
        raise errors.MirrorError(
            errors.UNSUPPORTED, f"{request.method} is not supported: this mirror is read-only"
        )
    registry = request.app[REGISTRY]
    port_view = request.app[PORT_VIEWS].get(_local_port(request) or 0)
    view = registry.router.views.get(port_view) if port_view else None
    route = registry.router.route(endpoint.name, request.query.get("ns"), view)
    response: web.StreamResponse
    if endpoint.kind == "manifests":
        response = await _manifest(request, route, endpoint.reference)
    elif endpoint.kind == "blobs":
        response = await _blob(request, route, endpoint.reference)
    elif endpoint.kind == "referrers":
        response = await _referrers(request, route, endpoint.reference)
    else:
        response = await _tags(request, route)
    return response


def _local_port(request: web.Request) -> int | None:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None


def _route_headers(route: Route) -> dict[str, str]:
    headers = dict(API_VERSION)
    if route.via_ns:
        headers["OCI-Namespace"] = route.registry
    return headers


async def _manifest(request: web.Request, route: Route, reference: str) -> web.Response:
    accept = accepted_manifest_types(request.headers.getall("Accept", []))
    registry = request.app[REGISTRY]
    found: Manifest = await registry.manifests.get(route, reference, accept)
    if request.method == "GET":
        registry.readahead.schedule(route, found)
    headers = {
        **_route_headers(route),
        "Docker-Content-Digest": found.digest,
        "ETag": f'"{found.digest}"',
        "X-Mirror-Cache": "stale" if found.stale else "ok",
    }
    if found.stale:
        headers["Warning"] = '110 mirror "Response is Stale: upstream unavailable"'
    if found.digest in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.media_type})


async def _blob(request: web.Request, route: Route, reference: str) -> web.StreamResponse:
    digest = parse_digest(reference)
    blobs = request.app[REGISTRY].blobs
    headers = {
        **_route_headers(route),
        "Docker-Content-Digest": str(digest),
        "Content-Type": OCTET_STREAM,
        "Accept-Ranges": "bytes",
        "Cache-Control": _IMMUTABLE,
    }
    if request.method == "HEAD":
        size = await blobs.head(route, digest)
        head = web.StreamResponse(headers=headers)
        if size is not None:
            head.content_length = size
        await head.prepare(request)
        await head.write_eof()
        return head
    ranged = "Range" in request.headers
    found = await blobs.get(route, digest, whole=ranged)
    if isinstance(found, LocalBlob):
        if found.body is not None and not ranged:
            # A small blob still in memory: no file to open (it is on disk too).
            return web.Response(body=found.body, headers={**headers, "ETag": f'"{digest}"'})
        if not ranged and _native_sendfile():
            with contextlib.suppress(FileNotFoundError):  # gone: FileResponse answers 404
                return await _send_whole_file(request, found, headers)
        return web.FileResponse(found.path, chunk_size=1024 * 1024, headers=headers)
    return await _stream(request, found, headers)


async def _send_whole_file(
    request: web.Request, blob: LocalBlob, headers: dict[str, str]
) -> web.StreamResponse:
    """A cached blob, whole, with sendfile(2): opened right here (a local file), not
    through FileResponse's thread hops -- 16 clients asking at once all start sooner --
    and sent from a worker thread (see mirror/http/sendfile.py), else by the loop."""
    file = os.fdopen(os.open(blob.path, os.O_RDONLY), "rb", buffering=0)
    with file:
        response = web.StreamResponse(headers=headers)
        response.content_length = blob.size
        await response.prepare(request)
        sender = request.app[SENDER]
        if blob.size and not await sender.send(request.transport, file.fileno(), 0, blob.size):
            await _sendfile(request, file, 0, blob.size)
        await response.write_eof()
        return response


async def _stream(
    request: web.Request, blob: StreamingBlob, headers: dict[str, str]
) -> web.StreamResponse:
    """Send a blob while it downloads; abort the connection if it fails verification."""
    response = web.StreamResponse(headers=headers)
    if blob.size is not None:
        response.content_length = blob.size
    await response.prepare(request)
    try:
        if blob.size is not None and _native_sendfile():
            await _send_growing_file(request, blob)
        else:
            async for chunk in blob.fetch.chunks():
                await response.write(chunk)
    except errors.MirrorError as exc:
        # The status line is sent: the only honest signal left is to cut the connection
        # before the body is complete, so the client cannot take it for the blob.
        log.warning("event=stream_aborted digest=%s reason=%r", blob.digest, exc.message)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _native_sendfile() -> bool:
    """asyncio's own loop sends files with sendfile(2); others (uvloop) copy in Python."""
    return isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)


async def _send_growing_file(request: web.Request, blob: StreamingBlob) -> None:
    """Send a download from its file as it is written, with sendfile(2): the kernel moves
    the bytes, the event loop only hands over ranges (and followers cost no copies)."""
    file = None  # opened at the first bytes written (the download creates the file)
    try:
        async for offset, count in blob.fetch.spans():
            if file is None:
                file = os.fdopen(blob.fetch.open_file(), "rb", buffering=0)
            await _sendfile(request, file, offset, count)
    finally:
        if file is not None:
            file.close()


async def _sendfile(request: web.Request, file: BinaryIO, offset: int, count: int) -> None:
    """sendfile(2) ``count`` bytes at ``offset`` to the client, if it is still there."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away")
    await asyncio.get_running_loop().sendfile(transport, file, offset, count)


async def _tags(request: web.Request, route: Route) -> web.Response:
    n, last = _pagination(request)
    page = await request.app[REGISTRY].tags.list(route, n, last)
    response = _page_response(request, {"name": route.name, "tags": page.items}, page, n)
    response.headers.update(_route_headers(route))
    if page.stale:
        response.headers["X-Mirror-Cache"] = "stale"
    return response


async def _referrers(request: web.Request, route: Route, reference: str) -> web.Response:
    subject = parse_digest(reference)
    artifact_type = request.query.get("artifactType") or None
    body = await request.app[REGISTRY].referrers.get(route, subject, artifact_type)
    headers = {**_route_headers(route), "Content-Type": OCI_INDEX}
    if artifact_type:
        headers["OCI-Filters-Applied"] = "artifactType"
    return web.Response(body=body, headers=headers)


def _pagination(request: web.Request) -> tuple[int | None, str | None]:
    raw_n = request.query.get("n")
    n = None
    if raw_n is not None:
        if not raw_n.isdigit():
            raise errors.MirrorError(
                errors.UNSUPPORTED, f"n must be a non-negative integer, got {raw_n!r}", status=400
            )
        n = int(raw_n)
    return n, request.query.get("last") or None


def _page_response(
    request: web.Request, body: dict[str, object], page: Page, n: int | None
) -> web.Response:
    headers = dict(API_VERSION)
    if page.next_last is not None and n is not None:
        query = {"n": str(n), "last": page.next_last}
        if "ns" in request.query:
            query["ns"] = request.query["ns"]
        url = request.rel_url.with_query(query)
        headers["Link"] = f'<{url}>; rel="next"'
    return web.Response(
        body=json.dumps(body).encode(), content_type="application/json", headers=headers
    )
