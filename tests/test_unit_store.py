"""Unit tests of the blob store and the in-flight download table (no network)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from mirror import errors
from mirror.reference import Digest
from mirror.registry.inflight import InflightFetches
from mirror.storage.blobs import BlobStore


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    s = BlobStore(tmp_path)
    s.prepare()
    return s


def digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


async def test_commit_verifies_and_publishes(store: BlobStore) -> None:
    data = os.urandom(300_000)
    await store.put_bytes(digest_of(data), data)
    assert await store.read_bytes(digest_of(data)) == data
    assert await store.size(digest_of(data)) == len(data)
    assert list(store.tmp_root.iterdir()) == []


async def test_wrong_content_is_never_published(store: BlobStore) -> None:
    data = os.urandom(1000)
    claimed = digest_of(b"something else")
    with pytest.raises(errors.BlobVerificationError):
        await store.put_bytes(claimed, data)
    assert await store.size(claimed) is None
    assert list(store.tmp_root.iterdir()) == []


async def test_wrong_size_is_never_published(store: BlobStore) -> None:
    data = os.urandom(1000)
    temp = store.new_temp(digest_of(data))
    await temp.write(data)
    with pytest.raises(errors.BlobVerificationError, match="size"):
        await temp.commit(store.path(digest_of(data)), 999)
    assert await store.size(digest_of(data)) is None
    assert list(store.tmp_root.iterdir()) == []


class Feed:
    """A download source the test drives chunk by chunk."""

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    @asynccontextmanager
    async def source(self) -> AsyncIterator[tuple[int | None, AsyncIterator[bytes]]]:
        async def chunks() -> AsyncIterator[bytes]:
            while (chunk := await self.queue.get()) is not None:
                yield chunk

        yield self.size, chunks()


async def read_until(it: AsyncIterator[bytes], got: bytearray, want: int) -> None:
    while len(got) < want:
        got += await it.__anext__()


@pytest.mark.parametrize("announce_size", [True, False])
async def test_readers_stream_while_downloading_but_never_the_last_byte_early(
    store: BlobStore, announce_size: bool
) -> None:
    data = os.urandom(200_000)
    feed = Feed(len(data) if announce_size else None)
    committed: list[int] = []

    async def on_commit(size: int) -> None:
        committed.append(size)

    table = InflightFetches(store)
    fetch = table.start(digest_of(data), ("up", "repo"), feed.source, on_commit)
    await feed.queue.put(data[:150_000])
    await fetch.wait_started()
    reader = fetch.chunks().__aiter__()
    got = bytearray()
    await read_until(reader, got, 150_000 - 1)  # streamed before the download ended
    await feed.queue.put(data[150_000:])
    next_chunk = asyncio.ensure_future(reader.__anext__())
    # everything but the held-back byte arrives; the rest waits for verification
    while len(got) < len(data) - 1:
        got += await next_chunk
        next_chunk = asyncio.ensure_future(reader.__anext__())
    await asyncio.sleep(0)
    assert not next_chunk.done() and not committed
    await feed.queue.put(None)
    got += await next_chunk
    assert bytes(got) == data
    await fetch.wait_done()
    assert committed == [len(data)]

    assert await store.read_bytes(digest_of(data)) == data
    await table.close()


async def test_mismatch_fails_readers_before_the_end_and_caches_nothing(
    store: BlobStore,
) -> None:
    data = os.urandom(100_000)
    wrong = bytearray(data)
    wrong[500] ^= 0xFF
    feed = Feed(len(data))

    async def on_commit(size: int) -> None:
        raise AssertionError("a wrong blob must never be committed")

    table = InflightFetches(store)
    fetch = table.start(digest_of(data), ("up", "repo"), feed.source, on_commit)
    await feed.queue.put(bytes(wrong))
    await feed.queue.put(None)
    await fetch.wait_started()
    got = bytearray()
    with pytest.raises(errors.BlobVerificationError):
        async for chunk in fetch.chunks():
            got += chunk
    assert len(got) < len(data)
    assert await store.size(digest_of(data)) is None
    assert list(store.tmp_root.iterdir()) == []
    assert table.get(digest_of(data)) is None  # a failed fetch is not joined again
    await table.close()


async def test_oversized_download_is_refused(store: BlobStore) -> None:
    data = os.urandom(10_000)
    feed = Feed(len(data) - 1)  # the upstream announced fewer bytes than it sends

    async def on_commit(size: int) -> None:
        raise AssertionError("must not commit")

    table = InflightFetches(store)
    fetch = table.start(digest_of(data), ("up", "repo"), feed.source, on_commit)
    await feed.queue.put(data)
    await feed.queue.put(None)
    with pytest.raises(errors.BlobVerificationError, match="more than"):
        await fetch.wait_started()
        await fetch.wait_done()
    assert list(store.tmp_root.iterdir()) == []
    await table.close()


def test_start_up_cleaning_spares_live_writers(store: BlobStore) -> None:
    (store.tmp_root / "999999999-sha256-dead.part").write_bytes(b"x")  # no such process
    (store.tmp_root / f"{os.getpid()}-sha256-mine.part").write_bytes(b"x")  # a crashed me
    (store.tmp_root / "junk.part").write_bytes(b"x")
    (store.tmp_root / "1-sha256-init.part").write_bytes(b"x")  # pid 1 is alive
    assert store.clean_temp() == 3
    assert [p.name for p in store.tmp_root.iterdir()] == ["1-sha256-init.part"]
