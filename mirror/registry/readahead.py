"""Read-ahead: when a client takes an image manifest, fetch its blobs before it asks.

A client pulls a manifest, then its config and layers, often one or a few at a time
(skopeo and podman into a directory copy layers one by one, dockerd three at once).
Starting every missing blob's download as soon as the manifest is served overlaps
them: the blob a client asks for next is on disk already, or downloading (the client
joins that one download like any follower; nothing is fetched twice).

Only platform manifests trigger it (a client that took an index has not chosen a
platform yet), once per manifest and repository per process. Downloads start in the
order the manifest lists them (the order clients ask), a few at a time and within a
window of bytes: a big layer is read ahead alone, so it never shares the upstream's
bandwidth with the layer a client is waiting for now. A failed read-ahead costs
nothing but a log line: the client's own request fetches the blob and reports the
error.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque

from mirror import manifest
from mirror.lru import LRU
from mirror.mediatypes import IMAGE_TYPES
from mirror.policy import Route
from mirror.reference import parse_digest
from mirror.registry.blobs import ProxyBlobs
from mirror.registry.common import Services
from mirror.registry.manifests import Manifest

log = logging.getLogger("mirror.readahead")

#: Read-ahead downloads running at once (client-started downloads are not counted).
CONCURRENCY = 4
#: Bytes of read-ahead downloads in flight at once (one bigger blob runs alone).
WINDOW = 32 * 1024 * 1024
#: Manifests remembered as read ahead (per process; forgotten oldest first).
REMEMBERED = 4096


class Readahead:
    """Background downloads of the blobs of manifests clients took."""

    def __init__(self, services: Services, blobs: ProxyBlobs) -> None:
        self._s = services
        self._blobs = blobs
        self._window = Window(CONCURRENCY, WINDOW)
        self._seen: LRU[tuple[str, str, str], bool] = LRU(REMEMBERED)
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, route: Route, found: Manifest) -> None:
        """Start fetching the blobs ``found`` references that are not cached yet."""
        if found.media_type not in IMAGE_TYPES or not route.upstream.readahead:
            return
        if self._s.upstream(route).offline:
            return
        key = (route.registry, route.repository, found.digest)
        if self._seen.get(key):
            return
        self._seen.put(key, True)
        blobs = manifest.blob_sizes(found.body)
        if not blobs:
            return
        # A fresh context: the manifest request's access-log stats are not touched.
        task = asyncio.create_task(
            self._run(route, found.digest, blobs),
            name=f"readahead {found.digest}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, route: Route, digest: str, blobs: list[tuple[str, int]]) -> None:
        # Queued in the manifest's order right away: the window keeps that order.
        queued = [(blob, size, self._window.enter(size)) for blob, size in blobs]
        results = await asyncio.gather(*(self._one(route, *item) for item in queued))

        fetched = sum(results)
        if fetched:
            log.info(
                "event=readahead upstream=%s repo=%s manifest=%s blobs=%d fetched=%d",
                route.registry,
                route.repository,
                digest,
                len(blobs),
                fetched,
            )

    async def _one(self, route: Route, blob: str, size: int, turn: asyncio.Future[None]) -> bool:
        try:
            await turn
        except asyncio.CancelledError:
            if not turn.cancel():  # the turn came, then the task was cancelled
                self._window.leave(size)
            raise
        try:
            return await self._blobs.warm(route, parse_digest(blob))
        except Exception as exc:  # the client's own request reports it
            log.info(
                "event=readahead_failed upstream=%s repo=%s digest=%s reason=%r",
                route.registry,
                route.repository,
                blob,
                getattr(exc, "message", None) or str(exc) or repr(exc),
            )
            return False
        finally:
            self._window.leave(size)

    async def close(self) -> None:
        """Stop waiting for read-ahead downloads (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class Window:
    """First come, first served admission of downloads: at most ``slots`` at once and
    ``budget`` bytes between them; one that alone exceeds the budget runs alone."""

    def __init__(self, slots: int, budget: int) -> None:
        self._slots = slots
        self._budget = budget
        self.running = 0
        self.running_bytes = 0
        self._queue: deque[tuple[int, asyncio.Future[None]]] = deque()

    def enter(self, size: int) -> asyncio.Future[None]:
        """Queue a download of ``size`` bytes; the future resolves when it may start.
        Cancel it to leave the queue; once resolved, call :meth:`leave` when done."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((size, turn))
        self._pump()
        return turn

    def leave(self, size: int) -> None:
        """A download that had its turn is over."""
        self.running -= 1
        self.running_bytes -= size
        self._pump()

    def _pump(self) -> None:
        while self._queue:
            size, turn = self._queue[0]
            if turn.done():  # cancelled while queued
                self._queue.popleft()
                continue
            fits = self.running < self._slots and self.running_bytes + size <= self._budget
            if self.running and not fits:
                return  # the head waits, and everything behind it: the order holds
            self._queue.popleft()
            self.running += 1
            self.running_bytes += size
            turn.set_result(None)
