"""Cached blobs sent whole from worker threads (mirror/http/sendfile.py): exact bytes,
and what a client relies on when another client hangs up, stalls, or the mirror stops.

In-process mirror (so the test can see the sender's threads and descriptors), a real
docker-registry upstream, raw sockets for the clients that misbehave.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from mirror.http import sendfile
from mirror.http.keys import SENDER
from tests.support import images
from tests.support.mirror import upstream
from tests.support.net import until

MiB = 1024 * 1024
SIZE = 32 * MiB  # more than loopback's socket buffers hold: a stalled client stalls a send
REPO = "team/send"


async def cached_blob(
    mirror_client: Any, registry_factory: Any, seed: int
) -> tuple[TestClient[Any, Any], bytes, str]:
    """A mirror with one blob cached and committed (served whole from its file)."""
    reg = registry_factory()
    data = random.Random(seed).randbytes(SIZE)
    digest = images.push_blob(reg.url, REPO, data)
    mirror: TestClient[Any, Any] = await mirror_client(
        [upstream("docker.io", reg.url, default=True)]
    )
    resp = await mirror.get(f"/v2/{REPO}/blobs/{digest}")
    assert await resp.read() == data
    # A Range request needs the committed file: it commits at once (no waiting for a lull).
    resp = await mirror.get(f"/v2/{REPO}/blobs/{digest}", headers={"Range": "bytes=0-0"})
    assert resp.status == 206
    return mirror, data, digest


def record_sends(monkeypatch: Any, sender: sendfile.ThreadedSendfile) -> list[str]:
    """The names of the threads the sender's sends ran on."""
    threads: list[str] = []
    real = sender._run

    def run(*args: Any) -> None:
        threads.append(threading.current_thread().name)
        real(*args)

    monkeypatch.setattr(sender, "_run", run)
    return threads


def open_fds(kind: str) -> int:
    """This process's descriptors whose target starts with ``kind`` (a path, "socket:")."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(kind)
        except FileNotFoundError:
            pass  # closed while listing
    return count


def server_side_socket(mirror: TestClient[Any, Any], writer: Any) -> str:
    """/proc's name of the mirror's end of the connection ``writer`` is the client of."""
    client_port = writer.get_extra_info("sockname")[1]
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if int(local.split(":")[1], 16) == mirror.port and (
                int(remote.split(":")[1], 16) == client_port
            ):
                return f"socket:[{inode}]"
    raise AssertionError("the mirror's end of the connection is not in /proc/net/tcp")


async def raw_get(mirror: TestClient[Any, Any], path: str) -> tuple[Any, Any]:
    """A GET on a socket with a small receive buffer; returns (reader, writer) after the
    response headers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (mirror.host, mirror.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: mirror\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert f"Content-Length: {SIZE}".encode() in head
    return reader, writer


async def read_rest(reader: Any) -> int:
    """Bytes read until the server closes the connection."""
    total = 0
    while chunk := await reader.read(1024 * 1024):
        total += len(chunk)
    return total


async def test_cached_blobs_go_out_whole_from_sender_threads(
    mirror_client: Any, registry_factory: Any, monkeypatch: Any
) -> None:
    mirror, data, digest = await cached_blob(mirror_client, registry_factory, seed=1)
    threads = record_sends(monkeypatch, mirror.app[SENDER])
    responses = await asyncio.gather(*(mirror.get(f"/v2/{REPO}/blobs/{digest}") for _ in range(8)))
    for resp in responses:
        assert resp.status == 200
        assert resp.headers["Docker-Content-Digest"] == digest
        assert await resp.read() == data
    assert len(threads) == 8 and all(t.startswith("mirror-send") for t in threads)


async def test_all_threads_busy_falls_back_to_the_event_loop(
    mirror_client: Any, registry_factory: Any, monkeypatch: Any
) -> None:
    mirror, data, digest = await cached_blob(mirror_client, registry_factory, seed=2)
    sender = mirror.app[SENDER]
    threads = record_sends(monkeypatch, sender)
    monkeypatch.setattr(sender, "_threads", 0)  # as if every thread were sending
    resp = await mirror.get(f"/v2/{REPO}/blobs/{digest}")
    assert await resp.read() == data
    assert threads == []


async def test_a_client_hanging_up_mid_send_leaves_nothing_behind(
    mirror_client: Any, registry_factory: Any
) -> None:
    mirror, data, digest = await cached_blob(mirror_client, registry_factory, seed=3)
    sender = mirror.app[SENDER]
    blob_file = str(mirror.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:])  # type: ignore[attr-defined]
    reader, writer = await raw_get(mirror, f"/v2/{REPO}/blobs/{digest}")
    server_end = server_side_socket(mirror, writer)
    await reader.readexactly(MiB)
    await until(lambda: sender._busy == 1, "the send running in a thread")
    assert open_fds(blob_file) == 2  # the handler's and the thread's own
    assert open_fds(server_end) == 2  # the transport's and the thread's own
    writer.transport.abort()  # hang up mid-body
    await until(lambda: sender._busy == 0, "the send thread to end")
    await until(lambda: open_fds(blob_file) == 0, "the blob file's descriptors closed")
    await until(lambda: open_fds(server_end) == 0, "the mirror's end of the connection closed")

    resp = await mirror.get(f"/v2/{REPO}/blobs/{digest}")
    assert await resp.read() == data  # the next client is served as ever


async def test_a_stalled_client_is_cut_off_short_after_the_stall_limit(
    mirror_client: Any, registry_factory: Any, monkeypatch: Any
) -> None:
    mirror, _, digest = await cached_blob(mirror_client, registry_factory, seed=4)
    monkeypatch.setattr(sendfile, "STALL_SECONDS", 1.0)
    monkeypatch.setattr(sendfile, "POLL_MS", 100)
    sender = mirror.app[SENDER]
    reader, writer = await raw_get(mirror, f"/v2/{REPO}/blobs/{digest}")
    await reader.readexactly(MiB)
    await until(lambda: sender._busy == 1, "the send running in a thread")
    await asyncio.sleep(2.0)  # read nothing: past the stall limit
    await until(lambda: sender._busy == 0, "the stalled send to end", within=5)
    got = MiB + await read_rest(reader)
    assert got < SIZE  # cut short: the client cannot take it for the blob
    writer.close()


async def test_shutdown_stops_a_stalled_send_and_later_sends_use_the_loop(
    mirror_client: Any, registry_factory: Any, monkeypatch: Any
) -> None:
    mirror, data, digest = await cached_blob(mirror_client, registry_factory, seed=5)
    monkeypatch.setattr(sendfile, "POLL_MS", 100)
    sender = mirror.app[SENDER]
    reader, writer = await raw_get(mirror, f"/v2/{REPO}/blobs/{digest}")
    await reader.readexactly(MiB)
    await until(lambda: sender._busy == 1, "the send running in a thread")
    await asyncio.wait_for(sender.close(), 5)  # returns once its threads are gone
    assert sender._pool is None
    got = MiB + await read_rest(reader)
    assert got < SIZE
    writer.close()
    threads = record_sends(monkeypatch, sender)
    resp = await mirror.get(f"/v2/{REPO}/blobs/{digest}")
    assert await resp.read() == data
    assert threads == []


@pytest.mark.parametrize("count", [0, SIZE])
async def test_sender_refuses_what_it_cannot_send(count: int) -> None:
    """No transport, or a transport without a socket: the caller's loop sendfile goes."""
    sender = sendfile.ThreadedSendfile()
    assert not await sender.send(None, 0, 0, count)
    read_fd, write_fd = os.pipe()
    try:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(write_fd, "wb", buffering=0)
        )
        assert transport.get_extra_info("socket") is None
        assert not await sender.send(transport, read_fd, 0, count)
        transport.close()
    finally:
        os.close(read_fd)
    await sender.close()
