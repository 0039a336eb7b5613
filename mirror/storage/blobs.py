"""Content-addressed blob files: blobs/<alg>/<ab>/<hex>, written temp -> verify -> fsync -> rename.

The store never touches the network. A file exists under its digest only once its
bytes were hashed and found to match; partial downloads live in ``tmp/`` and are
removed at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiofiles
import aiofiles.os

from mirror.errors import BlobVerificationError
from mirror.reference import ALGORITHMS, Digest

log = logging.getLogger("mirror.storage")

#: Size of the reads and writes the store does at once.
CHUNK_SIZE = 1024 * 1024
#: Niceness of the threads that hash, write and fsync blobs: bulk work, which yields the
#: CPU to the event loop (requests) and to other programs on the host (a client pulling
#: from this mirror, say) when they compete. Measured: see README, "Speed".
BULK_NICE = 10


def _lower_priority() -> None:
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BULK_NICE)


#: Hashing and writing blob bytes, fsync and rename: off the event loop, below it.
_BULK = ThreadPoolExecutor(4, thread_name_prefix="mirror-bulk", initializer=_lower_priority)


class TempBlob:
    """A blob being written: bytes go to a temp file and a running hash at once."""

    def __init__(self, path: Path, digest: Digest) -> None:
        self.path = path
        self.digest = digest
        self.written = 0
        self.verified = False
        self._hash = digest.hasher()
        self._fd = -1  # created by the first write, off the event loop
        self._closed = False

    async def write(self, chunk: bytes) -> None:
        """Append bytes (hashing and writing off the event loop, in one hop)."""
        await asyncio.get_running_loop().run_in_executor(_BULK, self._write, chunk)
        self.written += len(chunk)

    def _open(self) -> None:
        if self._fd < 0:
            if self._closed:
                raise BlobVerificationError(str(self.digest), "temp file already discarded")
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

    def _write(self, chunk: bytes) -> None:
        self._open()
        self._hash.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(self._fd, view) :]

    def mismatch(self, expected_size: int | None) -> str | None:
        """Why the bytes written so far are not the blob (None: they are), no I/O."""
        if expected_size is not None and self.written != expected_size:
            return f"size {self.written} != expected {expected_size}"
        actual = self._hash.hexdigest()
        return None if actual == self.digest.hex else f"content hashes to {actual}"

    async def verify(self, expected_size: int | None) -> None:
        """Check digest and size, then fsync and close the file; it stays in ``tmp/``.

        Raises BlobVerificationError (and discards the file) on a mismatch. A verified
        file is invisible until :meth:`publish`: a bundle import verifies everything
        first and publishes only then.
        """
        await self._check(expected_size)
        await asyncio.get_running_loop().run_in_executor(_BULK, self._seal)
        self.verified = True

    async def _check(self, expected_size: int | None) -> None:
        reason = self.mismatch(expected_size)
        if reason is not None:
            await self.discard()
            raise BlobVerificationError(str(self.digest), reason)

    async def publish(self, final: Path) -> None:
        """Atomically move a verified file into place (and fsync its directory)."""
        if not self.verified:
            raise RuntimeError(f"publish of unverified temp file {self.path}")
        await asyncio.get_running_loop().run_in_executor(_BULK, self._rename, final)

    async def commit(self, final: Path, expected_size: int | None) -> None:
        """Verify digest and size, fsync, and atomically move into place.

        Raises BlobVerificationError (and discards the file) on a mismatch.
        """
        await self._check(expected_size)
        # fsync, close, rename and directory fsync in one hop off the event loop
        await asyncio.get_running_loop().run_in_executor(_BULK, self._seal_and_rename, final)
        self.verified = True

    def _seal_and_rename(self, final: Path) -> None:
        self._seal()
        self._rename(final)

    def _seal(self) -> None:
        self._open()  # an empty blob was never written to
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1

    def _rename(self, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def discard(self) -> None:
        """Close and remove the temp file (idempotent)."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            await aiofiles.os.remove(self.path)
        except FileNotFoundError:
            pass


class BlobStore:
    """Verified blob files on disk, addressed by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blob_root = root / "blobs"
        self.tmp_root = root / "tmp"

    def prepare(self) -> None:
        """Create the directories (called once at start-up, before serving)."""
        for algorithm in ALGORITHMS:
            (self.blob_root / algorithm).mkdir(parents=True, exist_ok=True)
        self.tmp_root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: Digest) -> Path:
        """Where a committed blob lives."""
        return self.blob_root / digest.algorithm / digest.hex[:2] / digest.hex

    def new_temp(self, digest: Digest) -> TempBlob:
        """A fresh temp file for a download of ``digest``."""
        # The writer's pid leads the name: start-up cleaning spares live writers' files
        # (a `mirror` admin command may run beside the daemon on the same data dir).
        name = f"{os.getpid()}-{digest.algorithm}-{digest.hex[:16]}-{uuid.uuid4().hex}.part"
        return TempBlob(self.tmp_root / name, digest)

    async def size(self, digest: Digest) -> int | None:
        """The size of a committed blob, or None if it is not on disk.

        A stat of a local file whose inode is cached takes microseconds: done right here,
        it costs less than the hop to a thread and back (measured on the warm path)."""
        try:
            return os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return None

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Store small content (manifests) through the same verified path."""
        temp = self.new_temp(digest)
        try:
            await temp.write(data)
            await temp.commit(self.path(digest), len(data))
        except BaseException:
            await temp.discard()
            raise

    async def read_bytes(self, digest: Digest) -> bytes | None:
        """The content of a committed blob, or None if missing."""
        try:
            async with aiofiles.open(self.path(digest), "rb") as f:
                return await f.read()
        except FileNotFoundError:
            return None

    async def delete(self, digest: Digest) -> None:
        """Remove a committed blob if present."""
        try:
            await aiofiles.os.remove(self.path(digest))
        except FileNotFoundError:
            pass

    def clean_temp(self) -> int:
        """Remove partial downloads left by a crash (not those of a live process)."""
        removed = 0
        for entry in self.tmp_root.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            entry.unlink(missing_ok=True)
            removed += 1
        return removed

    def scan(self) -> list[tuple[Digest, int]]:
        """Every committed blob on disk with its size (blocking; run in an executor)."""
        found: list[tuple[Digest, int]] = []
        for algorithm in ALGORITHMS:
            base = self.blob_root / algorithm
            for shard in base.iterdir() if base.exists() else ():
                for entry in shard.iterdir():
                    found.append((Digest(algorithm, entry.name), entry.stat().st_size))
        return found

    def verify_file(self, digest: Digest) -> bool:
        """Re-hash a committed file (blocking): used for orphans found at start-up."""
        hasher = digest.hasher()
        with open(self.path(digest), "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                hasher.update(chunk)
        return hasher.hexdigest() == digest.hex


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
