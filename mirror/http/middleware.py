"""Error rendering in ONE place: MirrorError -> the spec's JSON; anything else -> UNKNOWN."""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from mirror import errors, stats

log = logging.getLogger("mirror.http")

STATS_KEY = web.RequestKey("mirror_stats", stats.RequestStats)
API_VERSION = {"Docker-Distribution-API-Version": "registry/2.0"}


def error_response(exc: errors.MirrorError) -> web.Response:
    """The JSON error body, status and headers of a domain error."""
    return web.Response(
        status=exc.status,
        body=json.dumps(exc.body()).encode(),
        content_type="application/json",
        headers={**API_VERSION, **exc.headers},
    )


def _from_http_exception(exc: web.HTTPException) -> errors.MirrorError:
    if exc.status == 405:
        return errors.MirrorError(errors.UNSUPPORTED, "method not allowed on this endpoint")
    if exc.status == 404:
        return errors.MirrorError(errors.UNSUPPORTED, "no such endpoint", status=404)
    code = errors.UNKNOWN if exc.status >= 500 else errors.UNSUPPORTED
    return errors.MirrorError(code, exc.reason, status=exc.status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as the spec's error JSON; never a traceback to the client."""
    request[STATS_KEY] = stats.begin()
    try:
        return await handler(request)
    except errors.MirrorError as exc:
        if exc.status >= 500:
            log.warning(
                "event=request_failed path=%s code=%s error=%r",
                request.path,
                exc.code.code,
                exc.message,
            )
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(_from_http_exception(exc))
    except (ConnectionResetError, BrokenPipeError):
        raise
    except Exception:
        log.exception("event=internal_error method=%s path=%s", request.method, request.path)
        return error_response(errors.MirrorError(errors.UNKNOWN, "internal error"))
