"""One upstream download per digest; every follower streams the same growing file.

A :class:`BlobFetch` runs detached from the request that started it, so a client
that disconnects costs nothing: the others, and the cache, still get the blob.
Readers never see the final byte before the digest and size are verified: on a
mismatch they fail instead, so no client receives a complete wrong body.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from mirror import errors
from mirror.reference import Digest
from mirror.storage.blobs import CHUNK_SIZE, BlobStore, TempBlob

log = logging.getLogger("mirror.inflight")

#: How long a finished fetch stays findable (closes the gap between "not in the
#: DB yet" and "no longer in flight" for requests that raced its end).
LINGER_SECONDS = 30.0
#: Bytes held back from readers until the download is verified.
HOLDBACK = 1

# The source of a download: an async context manager factory yielding
# (expected size or None, async iterator of chunks).
Source = Callable[[], Any]
OnCommit = Callable[[int], Awaitable[None]]


class BlobFetch:
    """A download of one blob from one upstream into the store."""

    def __init__(self, digest: Digest, store: BlobStore, key: tuple[str, str]) -> None:
        self.digest = digest
        self.key = key  # (upstream, repository) the download was made for
        self.size: int | None = None
        self.written = 0
        self.done = False
        self.verified = False  # digest and size checked: every byte may be sent
        self.error: BaseException | None = None
        self.path = store.path(digest)
        self._store = store
        self._temp: TempBlob = store.new_temp(digest)
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def run(self, source: Source, on_commit: OnCommit) -> None:
        """Download, verify, commit; wake every reader at each step."""
        started = time.monotonic()
        try:
            async with source() as (size, chunks):
                self.size = size
                self._started.set_result(None)
                async for chunk in chunks:
                    await self._temp.write(chunk)
                    self.written = self._temp.written
                    if self.size is not None and self.written > self.size:
                        raise errors.BlobVerificationError(
                            str(self.digest), f"upstream sent more than its {self.size} bytes"
                        )
                    self._wake()
            reason = self._temp.mismatch(self.size)
            if reason is not None:
                raise errors.BlobVerificationError(str(self.digest), reason)
            # Verified: readers may send the last bytes now; fsync, rename and the
            # metadata row follow without holding any client back.
            self.size = self.written
            self.verified = True
            self._wake()
            await self._temp.commit(self.path, self.size)
            await on_commit(self.written)
            self.done = True
            log.info(
                "event=blob_cached digest=%s upstream=%s repo=%s bytes=%d seconds=%.3f",
                self.digest,
                self.key[0],
                self.key[1],
                self.written,
                time.monotonic() - started,
            )
        except BaseException as exc:
            self.error = exc
            await self._temp.discard()
            if not self._started.done():
                self._started.set_exception(exc)
                self._started.exception()  # retrieved here; waiters re-raise it
            level = logging.WARNING if isinstance(exc, errors.MirrorError) else logging.ERROR
            log.log(
                level,
                "event=blob_fetch_failed digest=%s upstream=%s repo=%s bytes=%d error=%r",
                self.digest,
                self.key[0],
                self.key[1],
                self.written,
                str(exc) or repr(exc),
            )
            if not isinstance(exc, Exception):
                raise
        finally:
            self._wake()

    def _wake(self) -> None:
        event, self._progress = self._progress, asyncio.Event()
        event.set()

    async def wait_started(self) -> None:
        """Wait until the upstream answered (size known) or the fetch failed."""
        await asyncio.shield(self._started)

    async def wait_done(self) -> None:
        """Wait until the blob is committed; raise the fetch's error if it failed."""
        while not self.done:
            if self.error is not None:
                raise self.error
            await self._progress.wait()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The blob's bytes as they arrive, the last one only after verification."""
        if self.error is not None:
            raise self.error
        try:
            fd = os.open(self._temp.path, os.O_RDONLY)
        except FileNotFoundError:
            # Committed meanwhile: the same inode now lives at the final path.
            fd = os.open(self.path, os.O_RDONLY)
        loop = asyncio.get_running_loop()
        pos = 0
        try:
            while True:
                if self.error is not None and not self.verified:
                    raise self.error
                limit = self.written if self.verified else self.written - HOLDBACK
                if pos < limit:
                    n = min(CHUNK_SIZE, limit - pos)
                    chunk = await loop.run_in_executor(None, os.pread, fd, n, pos)
                    if not chunk:
                        raise errors.BlobVerificationError(str(self.digest), "file shrank")
                    pos += len(chunk)
                    yield chunk
                    continue
                if self.verified:
                    return
                await self._progress.wait()

        finally:
            os.close(fd)


class InflightFetches:
    """The table of running (and just finished) downloads, by digest."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self._fetches: dict[Digest, BlobFetch] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def get(self, digest: Digest) -> BlobFetch | None:
        """A running or just-finished fetch that did not fail."""
        fetch = self._fetches.get(digest)
        if fetch is not None and fetch.error is not None:
            return None
        return fetch

    def start(
        self, digest: Digest, key: tuple[str, str], source: Source, on_commit: OnCommit
    ) -> BlobFetch:
        """Start the one download of ``digest`` (detached from any request)."""
        fetch = BlobFetch(digest, self._store, key)
        self._fetches[digest] = fetch
        task = asyncio.create_task(self._run(fetch, source, on_commit), name=f"fetch {digest}")
        fetch.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fetch

    async def _run(self, fetch: BlobFetch, source: Source, on_commit: OnCommit) -> None:
        try:
            await fetch.run(source, on_commit)
        finally:
            if fetch.error is not None:
                self._forget(fetch)
            else:
                asyncio.get_running_loop().call_later(LINGER_SECONDS, self._forget, fetch)

    def _forget(self, fetch: BlobFetch) -> None:
        if self._fetches.get(fetch.digest) is fetch:
            del self._fetches[fetch.digest]

    async def close(self) -> None:
        """Cancel running downloads (at shutdown); their temp files are removed."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._fetches.clear()
