"""Prefetch: warm the cache with chosen platforms of images, through the daemon's own
verified, single-fetch path; also what `[[sync]]` entries run in the background."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mirror import content, errors
from mirror.config import format_size
from mirror.platforms import Platform
from mirror.reference import parse_digest
from mirror.registry.blobs import LocalBlob
from mirror.registry.service import Registry

log = logging.getLogger("mirror.prefetch")

#: Blob downloads running at once, across all images of one run.
CONCURRENCY = 6


@dataclass
class ImageResult:
    """What prefetching one reference did."""

    ref: str
    name: str = ""
    platforms: list[str] = field(default_factory=list)
    layers: int = 0
    fetched_bytes: int = 0
    cached_bytes: int = 0
    pinned: int = 0
    error: str | None = None


class Prefetcher:
    """Runs prefetches on a registry, with optional progress bars."""

    def __init__(self, registry: Registry, progress: Progress | None = None) -> None:
        self._registry = registry
        self._progress = progress
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def run(
        self, refs: Iterable[str], platforms: list[Platform] | None, pin: bool
    ) -> list[ImageResult]:
        """Prefetch every reference concurrently; failures are reported, not raised."""
        return list(await asyncio.gather(*(self.one(r, platforms, pin) for r in refs)))

    async def one(self, ref: str, platforms: list[Platform] | None, pin: bool) -> ImageResult:
        result = ImageResult(ref)
        try:
            plan = await content.plan(self._registry, ref, platforms)
        except (errors.MirrorError, ValueError) as exc:
            result.error = exc.message if isinstance(exc, errors.MirrorError) else str(exc)
            return result
        result.name, result.platforms, result.layers = plan.name, plan.platforms, len(plan.blobs)
        task = self._task(plan)
        try:
            await asyncio.gather(*(self._blob(plan, b, result, task) for b in plan.blobs))
        except errors.MirrorError as exc:
            result.error = exc.message
            return result
        finally:
            if self._progress is not None and task is not None:
                self._progress.update(task, completed=plan.total_bytes)
        if pin:
            digests = [m.digest for m in plan.manifests()] + [b.digest for b in plan.blobs]
            result.pinned = await self._registry.services.meta.pin(digests, f"prefetch {plan.name}")
        return result

    def _task(self, plan: content.ImagePlan) -> TaskID | None:
        if self._progress is None:
            return None
        return self._progress.add_task(
            plan.name, total=plan.total_bytes, layers=f"0/{len(plan.blobs)} blobs"
        )

    async def _blob(
        self,
        plan: content.ImagePlan,
        blob: content.BlobRef,
        result: ImageResult,
        task: TaskID | None,
    ) -> None:
        async with self._slots:
            found = await self._registry.blobs.get(plan.route, parse_digest(blob.digest))
            if isinstance(found, LocalBlob):
                result.cached_bytes += found.size
                self._advance(task, found.size, result)
                return
            fetch, seen = found.fetch, 0
            waiter = asyncio.ensure_future(fetch.wait_done())
            while not waiter.done():
                await asyncio.wait([waiter], timeout=0.2)
                self._advance(task, fetch.written - seen, None)
                seen = fetch.written
            waiter.result()
            result.fetched_bytes += fetch.written
            self._advance(task, fetch.written - seen, result)

    def _advance(self, task: TaskID | None, size: int, done: ImageResult | None) -> None:
        if self._progress is None or task is None:
            return
        self._progress.advance(task, size)
        if done is not None:
            finished = int(self._progress.tasks[task].fields.get("finished", 0)) + 1
            self._progress.update(task, finished=finished, layers=f"{finished}/{done.layers} blobs")


def progress_bars(stream: TextIO) -> Progress:
    """A rich progress display: one bar per image, bytes and blobs."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TextColumn("{task.fields[layers]}"),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=False,
    )


def report(results: list[ImageResult], out: TextIO = sys.stderr) -> int:
    """One line per image, a summary, and the exit status (1 if any failed)."""
    failed = [r for r in results if r.error]
    for r in results:
        if r.error:
            print(f"failed {r.name or r.ref}: {r.error}", file=out)
        else:
            pinned = f" pinned={r.pinned}" if r.pinned else ""
            print(
                f"prefetched {r.name} platforms={','.join(r.platforms)} blobs={r.layers} "
                f"fetched={format_size(r.fetched_bytes)} "
                f"cached={format_size(r.cached_bytes)}{pinned}",
                file=out,
            )
    ok = [r for r in results if not r.error]
    fetched = sum(r.fetched_bytes for r in ok)
    cached = sum(r.cached_bytes for r in ok)
    platforms = sum(len(r.platforms) for r in ok)
    print(
        f"summary: images={len(ok)} failed={len(failed)} platforms={platforms} "
        f"fetched={format_size(fetched)} already-cached={format_size(cached)}",
        file=out,
    )
    if ok and fetched == 0 and not failed:
        print("nothing to download: everything was already cached", file=out)
    return 1 if failed else 0


async def sync_forever(registry: Registry, index: int) -> None:
    """Keep one `[[sync]]` entry fresh: prefetch its refs every `interval`, logging each run."""
    entry = registry.services.settings.sync[index]
    from mirror.platforms import parse_platform

    platforms = [parse_platform(p) for p in entry.platforms] or None
    prefetcher = Prefetcher(registry)
    while True:
        started = time.monotonic()
        try:
            results = await prefetcher.run(entry.refs, platforms, entry.pin)
        except Exception:
            log.exception("event=sync_failed sync=%d", index)
            await asyncio.sleep(entry.interval)
            continue

        failed = [r for r in results if r.error]
        log.info(
            "event=sync_run sync=%d refs=%d failed=%d fetched=%d cached=%d seconds=%.2f%s",
            index,
            len(results),
            len(failed),
            sum(r.fetched_bytes for r in results),
            sum(r.cached_bytes for r in results),
            time.monotonic() - started,
            "".join(f" error[{r.ref}]={r.error!r}" for r in failed),
        )
        await asyncio.sleep(entry.interval)
