"""The blob path under stress and faults: a real `mirror serve` process, a real
docker-registry upstream, and a `FaultyProxy` in between where a fault is needed.

What users rely on: one upstream download per digest however many clients ask,
clients stream while it runs, a client hanging up costs the others nothing, a
lying or dying upstream never yields a complete 200 of wrong bytes nor a cached
file, and the disk and database agree again after a kill -9 or hand edits.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.support import images
from tests.support.mirror import MirrorProcess, upstream
from tests.support.mirror_fixtures import MirrorFactory
from tests.support.net import until
from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry

MiB = 1024 * 1024
REPO = "team/robust"
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_read=20)
#: Streaming differs per loop: asyncio sends a growing file with sendfile(2), uvloop
#: (no sendfile) copies from memory; both must keep the same promises.
LOOPS = ["asyncio", "uvloop"]


# -- helpers ---------------------------------------------------------------------------------


def push_random_blob(registry: Registry, size: int, seed: int) -> tuple[bytes, str]:
    """Random (incompressible) bytes pushed to ``REPO``; returns (data, digest)."""
    data = random.Random(seed).randbytes(size)
    digest = images.push_blob(registry.url, REPO, data)
    assert digest == images.sha256_digest(data)
    return data, digest


def blob_url(mirror: MirrorProcess, digest: str) -> str:
    return f"{mirror.url}/v2/{REPO}/blobs/{digest}"


def blob_rows(mirror: MirrorProcess, digest: str) -> list[tuple[Any, ...]]:
    return mirror.db_rows("blobs", "digest = ?", digest)


async def wait_log(mirror: MirrorProcess, needle: str) -> str:
    """`MirrorProcess.wait_log` off the event loop (clients may be streaming meanwhile)."""
    return await asyncio.to_thread(mirror.wait_log, needle)


async def expect_cached(mirror: MirrorProcess, digest: str, data: bytes) -> None:
    """The verified file is in place and the database has its row (waits for the row)."""
    await until(lambda: bool(blob_rows(mirror, digest)), f"a blobs row for {digest}")
    path = mirror.blob_path(digest)
    assert path.is_file(), f"{digest} not cached at {path}"
    assert path.read_bytes() == data
    rows = blob_rows(mirror, digest)
    assert len(rows) == 1 and rows[0][1] == len(data), rows


def assert_not_cached(mirror: MirrorProcess, digest: str) -> None:
    """No file under blobs/ and no row: nothing of a failed download was kept."""
    assert not mirror.blob_path(digest).exists()
    assert blob_rows(mirror, digest) == []


class Download:
    """One client GET on its own connection (own session), run as a task.

    Records the status, every byte received and the error that ended it, if any.
    ``hang_up_after``: close the connection once that many bytes arrived.
    ``on_first_bytes``: called (synchronously) when the first body bytes arrive.
    ``rate``: read at most that many bytes per second (a steady, slower client).
    ``pause_after``/``resume``: stop reading after that many bytes until ``resume`` is set
    (the connection stays open: a stalled client).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        hang_up_after: int | None = None,
        on_headers: Callable[[], None] | None = None,
        on_first_bytes: Callable[[], None] | None = None,
        rate: float | None = None,
        pause_after: int | None = None,
        resume: asyncio.Event | None = None,
    ) -> None:
        self.url = url
        self.rate = rate
        self.pause_after = pause_after
        self.resume = resume
        self.headers = headers or {}
        self.hang_up_after = hang_up_after
        self.on_headers = on_headers
        self.on_first_bytes = on_first_bytes
        self.status: int | None = None
        self.content_length: int | None = None
        self.body = bytearray()
        self.error: BaseException | None = None
        self.hung_up = False
        self.finished = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
                async with session.get(self.url, headers=self.headers) as resp:
                    self.status = resp.status
                    self.content_length = resp.content_length
                    if self.on_headers is not None:
                        self.on_headers()
                    started = time.monotonic()
                    async for chunk in resp.content.iter_any():
                        if not self.body and self.on_first_bytes is not None:
                            self.on_first_bytes()
                        self.body += chunk
                        if self.rate is not None:
                            due = started + len(self.body) / self.rate
                            await asyncio.sleep(max(0.0, due - time.monotonic()))
                        if self.pause_after is not None and len(self.body) >= self.pause_after:
                            self.pause_after = None
                            assert self.resume is not None
                            await self.resume.wait()
                        if self.hang_up_after is not None and len(self.body) >= self.hang_up_after:
                            self.hung_up = True
                            resp.close()  # drops the TCP connection mid-body
                            return
        except aiohttp.ClientError as exc:
            self.error = exc
        finally:
            self.finished = True

    async def result(self) -> Download:
        await self.task
        return self

    @property
    def complete_ok(self) -> bool:
        """A 200 whose whole announced body arrived without error."""
        return (
            self.status == 200
            and self.error is None
            and not self.hung_up
            and (self.content_length is None or len(self.body) == self.content_length)
        )


def assert_refused(download: Download, data: bytes) -> None:
    """The client did not get a complete 200: an error status, or a cut connection
    before the last byte (so it cannot mistake what it got for the blob)."""
    assert not download.complete_ok, "a complete 200 was delivered"
    assert len(download.body) < len(data) or download.status != 200
    if download.status == 200:
        assert isinstance(download.error, aiohttp.ClientPayloadError), download.error


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def proxy(faulty_proxy: FaultyProxy) -> FaultyProxy:
    return faulty_proxy


def through(proxy_or_registry: FaultyProxy | Registry) -> list[dict[str, Any]]:
    return [upstream("docker.io", proxy_or_registry.url, default=True)]


# -- one download, many clients --------------------------------------------------------------


async def test_herd_of_clients_makes_one_upstream_get(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    data, digest = push_random_blob(registry, 3 * MiB, seed=1001)
    mirror = mirror_factory(through(proxy))
    # A slow upstream keeps the download open while the whole herd arrives.
    proxy.delay_seconds = 0.5
    proxy.throttle_bytes_per_sec = 3 * MiB  # ~1 s of body after that
    registry.reset_counts()
    committed_at_headers: list[bool] = []

    def seen_headers() -> None:
        committed_at_headers.append(mirror.blob_path(digest).exists())

    herd = [Download(blob_url(mirror, digest), on_headers=seen_headers) for _ in range(16)]
    for download in herd:
        await download.result()
    for download in herd:
        assert download.error is None and download.status == 200
        assert bytes(download.body) == data
    assert registry.count("GET", digest) == 1
    assert proxy.count("GET", digest) == 1
    # every client was answered while the download ran: a real herd, not a queue
    assert committed_at_headers == [False] * 16
    await expect_cached(mirror, digest, data)


@pytest.mark.parametrize("loop_kind", LOOPS)
async def test_follower_streams_while_download_runs(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory, loop_kind: str
) -> None:
    data, digest = push_random_blob(registry, 4 * MiB, seed=1002)
    mirror = mirror_factory(through(proxy), event_loop=loop_kind)
    proxy.throttle_bytes_per_sec = 1 * MiB  # ~4 s upstream transfer
    registry.reset_counts()
    order: list[str] = []
    at_follower_first_bytes: dict[str, object] = {}

    def leader_first() -> None:
        order.append("leader first bytes")

    def follower_first() -> None:
        order.append("follower first bytes")
        at_follower_first_bytes.update(
            leader_finished=leader.finished,
            upstream_finished=any(digest in p for p in list(proxy.completed)),
            committed=mirror.blob_path(digest).exists(),
            partial_files=len(mirror.temp_files()),
        )

    leader = Download(blob_url(mirror, digest), on_first_bytes=leader_first)
    await until(lambda: len(leader.body) > 0, "leader receives bytes")
    follower = Download(blob_url(mirror, digest), on_first_bytes=follower_first)
    await leader.result()
    order.append("leader done")
    await follower.result()
    assert order[:3] == ["leader first bytes", "follower first bytes", "leader done"]
    assert at_follower_first_bytes == {
        "leader_finished": False,
        "upstream_finished": False,
        "committed": False,
        "partial_files": 1,
    }
    for download in (leader, follower):
        assert download.complete_ok and bytes(download.body) == data
    assert registry.count("GET", digest) == 1
    await expect_cached(mirror, digest, data)


async def test_download_survives_client_hanging_up(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    data, digest = push_random_blob(registry, 4 * MiB, seed=1003)
    mirror = mirror_factory(through(proxy))
    proxy.throttle_bytes_per_sec = 2 * MiB
    registry.reset_counts()
    quitter = await Download(blob_url(mirror, digest), hang_up_after=256 * 1024).result()
    assert quitter.hung_up and len(quitter.body) < len(data)
    assert not mirror.blob_path(digest).exists()  # it hung up mid-download
    partial = mirror.temp_files()
    assert len(partial) == 1
    size_at_hang_up = partial[0].stat().st_size

    def grew_without_clients() -> bool:
        files = mirror.temp_files()
        return mirror.blob_path(digest).exists() or (
            len(files) == 1 and files[0].stat().st_size >= size_at_hang_up + MiB
        )

    # nobody is connected now, yet the download goes on
    await until(grew_without_clients, "the download continues with no client")
    second = await Download(blob_url(mirror, digest)).result()
    assert second.complete_ok and bytes(second.body) == data
    await expect_cached(mirror, digest, data)
    assert mirror.temp_files() == []
    assert registry.count("GET", digest) == 1


async def test_download_keeps_pace_with_a_steady_client(
    registry: Registry, mirror_factory: MirrorFactory
) -> None:
    # A client slower than the upstream: the download runs at most PACE_AHEAD (32 MiB)
    # ahead of it instead of racing to the end, so a cold pull's work is spread over the
    # client's own transfer rather than all at its start.
    data, digest = push_random_blob(registry, 96 * MiB, seed=1010)
    mirror = mirror_factory(through(registry))
    seen: dict[str, object] = {}

    def at_a_sixth() -> None:
        if "committed" not in seen and len(steady.body) >= 16 * MiB:
            files = mirror.temp_files()
            seen.update(
                committed=mirror.blob_path(digest).exists(),
                on_disk=files[0].stat().st_size if files else None,
            )

    steady = Download(blob_url(mirror, digest), rate=32 * MiB)
    while not steady.finished:
        at_a_sixth()
        await asyncio.sleep(0.005)
    await steady.result()
    assert steady.complete_ok and bytes(steady.body) == data
    # unpaced, the whole blob would be on disk long before the client had a sixth of it
    assert seen["committed"] is False, seen
    on_disk = seen["on_disk"]
    assert isinstance(on_disk, int) and on_disk <= 16 * MiB + 32 * MiB + 16 * MiB, seen
    await expect_cached(mirror, digest, data)


async def test_stalled_client_never_holds_the_download(
    registry: Registry, mirror_factory: MirrorFactory
) -> None:
    # A client that stops reading but keeps its connection: the download stops waiting
    # for it (it would otherwise stall until the upstream timed out) and completes.
    data, digest = push_random_blob(registry, 64 * MiB, seed=1011)
    mirror = mirror_factory(through(registry))
    resume = asyncio.Event()
    stalled = Download(blob_url(mirror, digest), pause_after=MiB, resume=resume)
    await until(lambda: mirror.blob_path(digest).exists(), "the blob cached meanwhile")
    assert len(stalled.body) < len(data) and not stalled.finished
    await expect_cached(mirror, digest, data)
    resume.set()
    await stalled.result()
    assert stalled.complete_ok and bytes(stalled.body) == data


# -- an upstream that lies or dies -----------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
async def test_corrupt_upstream_body_is_never_served_whole_nor_cached(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory, loop_kind: str
) -> None:
    data, digest = push_random_blob(registry, 2 * MiB, seed=1004)
    mirror = mirror_factory(through(proxy), event_loop=loop_kind)
    proxy.flip_blob_byte = True
    registry.reset_counts()
    url = blob_url(mirror, digest)

    lied_to = await Download(url).result()
    assert proxy.flipped, "the fault was not injected"
    assert_refused(lied_to, data)
    await wait_log(mirror, "event=blob_fetch_failed")
    if lied_to.status == 200:  # the status line went out: the stream had to be cut
        await wait_log(mirror, "event=stream_aborted")
    await until(lambda: mirror.temp_files() == [], "tmp/ is emptied")
    assert_not_cached(mirror, digest)

    # a Range on the uncached blob: the whole blob is verified first, so an error status
    ranged = await Download(url, headers={"Range": "bytes=0-99"}).result()
    assert ranged.status is not None and ranged.status >= 500, ranged.status
    assert data[:100] not in bytes(ranged.body)
    await until(lambda: mirror.temp_files() == [], "tmp/ is emptied")
    assert_not_cached(mirror, digest)
    assert registry.count("GET", digest) == 2  # each attempt fetched; none was kept

    proxy.flip_blob_byte = False
    honest = await Download(url).result()
    assert honest.complete_ok and bytes(honest.body) == data
    await expect_cached(mirror, digest, data)
    ranged = await Download(url, headers={"Range": "bytes=0-99"}).result()
    assert ranged.status == 206 and bytes(ranged.body) == data[:100]


async def test_upstream_vanishing_mid_download(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    data, digest = push_random_blob(registry, 4 * MiB, seed=1005)
    mirror = mirror_factory(through(proxy))
    proxy.throttle_bytes_per_sec = 1 * MiB
    registry.reset_counts()
    client = Download(blob_url(mirror, digest))
    await until(lambda: len(client.body) >= 256 * 1024, "the client receives bytes")
    await asyncio.to_thread(proxy.stop)  # connection to the upstream cut mid-body
    await client.result()
    assert_refused(client, data)
    await wait_log(mirror, "event=blob_fetch_failed")
    await until(lambda: mirror.temp_files() == [], "tmp/ is emptied")
    assert_not_cached(mirror, digest)

    proxy.start()
    proxy.throttle_bytes_per_sec = None
    registry.reset_counts()
    again = await Download(blob_url(mirror, digest)).result()
    assert again.complete_ok and bytes(again.body) == data
    assert registry.count("GET", digest) == 1
    await expect_cached(mirror, digest, data)


# -- crashes and hand edits ------------------------------------------------------------------


async def test_kill9_mid_download_leaves_no_trace_after_restart(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    data, digest = push_random_blob(registry, 8 * MiB, seed=1006)
    mirror = mirror_factory(through(proxy))
    proxy.throttle_bytes_per_sec = 1 * MiB
    client = Download(blob_url(mirror, digest))

    def partial_on_disk() -> bool:
        files = mirror.temp_files()
        return len(files) == 1 and files[0].stat().st_size > 0

    await until(partial_on_disk, "a partial download in tmp/")
    mirror.kill9()
    await client.result()
    assert_refused(client, data)
    partial = mirror.temp_files()
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(data)
    assert_not_cached(mirror, digest)

    proxy.throttle_bytes_per_sec = None
    mirror.start()  # same data dir, same port
    assert "event=reconciled temp_removed=1 " in mirror.log()
    assert mirror.temp_files() == []
    registry.reset_counts()
    again = await Download(blob_url(mirror, digest)).result()
    assert again.complete_ok and bytes(again.body) == data
    assert registry.count("GET", digest) == 1
    await expect_cached(mirror, digest, data)


def fast_and_slow(registry: Registry, proxy: FaultyProxy) -> list[dict[str, Any]]:
    """The registry twice: as the default upstream, and as ``slow.example`` (``?ns=``)
    through the proxy, which a test may throttle to keep a download receiving."""
    return [
        upstream("docker.io", registry.url, default=True),
        upstream("slow.example", proxy.url),
    ]


async def slow_download(mirror: MirrorProcess, proxy: FaultyProxy, digest: str) -> Download:
    """A download through the throttled proxy, once it is receiving: while it runs the
    mirror is not quiet, so verified downloads wait with their commit."""
    proxy.throttle_bytes_per_sec = 1 * MiB
    download = Download(blob_url(mirror, digest) + "?ns=slow.example")
    await until(lambda: len(download.body) > 0, "the slow download receiving")
    return download


@dataclass
class PendingCommit:
    """A fast blob downloaded and verified, its commit held back by a slow download that
    is still receiving (``other``)."""

    mirror: MirrorProcess
    fast: bytes
    fast_digest: str
    slow: bytes
    slow_digest: str
    other: Download


async def pending_commit(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory, seed: int, size: int
) -> PendingCommit:
    fast, fast_digest = push_random_blob(registry, size, seed=seed)
    slow, slow_digest = push_random_blob(registry, 5 * MiB, seed=seed + 1)
    mirror = mirror_factory(fast_and_slow(registry, proxy))
    other = await slow_download(mirror, proxy, slow_digest)
    first = await Download(blob_url(mirror, fast_digest)).result()
    assert first.complete_ok and bytes(first.body) == fast
    # Verified and served; its commit (fsync, rename, row) waits while a download receives.
    assert_not_cached(mirror, fast_digest)
    return PendingCommit(mirror, fast, fast_digest, slow, slow_digest, other)


async def test_verified_blob_is_served_at_once_and_committed_at_the_next_lull(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    pending = await pending_commit(registry, proxy, mirror_factory, seed=1010, size=4 * MiB)
    mirror, fast, fast_digest = pending.mirror, pending.fast, pending.fast_digest
    slow, slow_digest, other = pending.slow, pending.slow_digest, pending.other
    assert len(mirror.temp_files()) == 2
    registry.reset_counts()
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as session:
        async with session.head(blob_url(mirror, fast_digest)) as head:
            assert head.status == 200
            assert head.headers["Content-Length"] == str(len(fast))
            assert head.headers["Docker-Content-Digest"] == fast_digest
    again = await Download(blob_url(mirror, fast_digest)).result()
    assert again.complete_ok and bytes(again.body) == fast
    assert registry.count("HEAD", fast_digest) + registry.count("GET", fast_digest) == 0
    assert_not_cached(mirror, fast_digest)

    # A Range request needs the committed file: it is committed at once, not at the lull.
    ranged = await Download(
        blob_url(mirror, fast_digest), headers={"Range": "bytes=100-199"}
    ).result()
    assert ranged.status == 206 and bytes(ranged.body) == fast[100:200]
    assert mirror.blob_path(fast_digest).read_bytes() == fast
    await expect_cached(mirror, fast_digest, fast)
    assert not other.finished, "the slow download ended early: the mirror was quiet"

    # The slow download ends; its own commit follows at the lull, with no client asking.
    await other.result()
    assert other.complete_ok and bytes(other.body) == slow
    await expect_cached(mirror, slow_digest, slow)
    assert mirror.temp_files() == []


async def test_kill9_before_a_deferred_commit_loses_only_that_download(
    registry: Registry, proxy: FaultyProxy, mirror_factory: MirrorFactory
) -> None:
    pending = await pending_commit(registry, proxy, mirror_factory, seed=1012, size=2 * MiB)
    mirror, fast, fast_digest = pending.mirror, pending.fast, pending.fast_digest

    mirror.kill9()
    await pending.other.result()
    proxy.throttle_bytes_per_sec = None
    mirror.start()  # same data dir, same port
    assert "event=reconciled temp_removed=2 " in mirror.log()
    assert_not_cached(mirror, fast_digest)
    registry.reset_counts()
    again = await Download(blob_url(mirror, fast_digest)).result()
    assert again.complete_ok and bytes(again.body) == fast
    assert registry.count("GET", fast_digest) == 1  # fetched again, never served half
    await expect_cached(mirror, fast_digest, fast)


async def test_restart_forgets_rows_of_deleted_files(
    registry: Registry, mirror_factory: MirrorFactory
) -> None:
    data, digest = push_random_blob(registry, 512 * 1024, seed=1007)
    mirror = mirror_factory(through(registry))
    first = await Download(blob_url(mirror, digest)).result()
    assert first.complete_ok and bytes(first.body) == data
    await expect_cached(mirror, digest, data)
    mirror.stop()
    mirror.blob_path(digest).unlink()

    mirror.start()
    assert "rows_dropped=1 " in mirror.log()
    assert blob_rows(mirror, digest) == []  # no row points at a missing file
    registry.reset_counts()
    again = await Download(blob_url(mirror, digest)).result()
    assert again.complete_ok and bytes(again.body) == data
    assert registry.count("GET", digest) == 1
    await expect_cached(mirror, digest, data)


async def test_restart_adopts_verified_orphans_and_deletes_corrupt_ones(
    registry: Registry, mirror_factory: MirrorFactory
) -> None:
    good, good_digest = push_random_blob(registry, 300 * 1024, seed=1008)
    bad, bad_digest = push_random_blob(registry, 300 * 1024, seed=1009)
    mirror = mirror_factory(through(registry))
    mirror.stop()
    # a file with no row, as after a crash between rename and insert ...
    mirror.blob_path(good_digest).parent.mkdir(parents=True, exist_ok=True)
    mirror.blob_path(good_digest).write_bytes(good)
    # ... and one whose content does not match its name
    corrupt = bytearray(bad)
    corrupt[1000] ^= 0xFF
    mirror.blob_path(bad_digest).parent.mkdir(parents=True, exist_ok=True)
    mirror.blob_path(bad_digest).write_bytes(bytes(corrupt))

    mirror.start()
    assert "files_adopted=1 files_dropped=1" in mirror.log()
    assert [row[1] for row in blob_rows(mirror, good_digest)] == [len(good)]  # at start
    await expect_cached(mirror, good_digest, good)
    assert_not_cached(mirror, bad_digest)

    registry.reset_counts()
    adopted = await Download(blob_url(mirror, good_digest)).result()
    assert adopted.complete_ok and bytes(adopted.body) == good
    assert registry.count("GET", good_digest) == 0  # served from the adopted file
    refetched = await Download(blob_url(mirror, bad_digest)).result()
    assert refetched.complete_ok and bytes(refetched.body) == bad
    assert registry.count("GET", bad_digest) == 1
    await expect_cached(mirror, bad_digest, bad)
