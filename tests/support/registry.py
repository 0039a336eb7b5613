"""A real upstream registry: a ``docker-registry serve`` (distribution 2.8) subprocess.

Each `Registry` has its own root directory (filesystem storage, config, logs) and a fixed
loopback port, so it can be stopped, killed and started again with the same address and
content. Requests are counted from the registry's access log (Apache combined format).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.net import LOOPBACK, free_port

if TYPE_CHECKING:
    from tests.support.tokenserver import TokenServer

REGISTRY_BINARY = os.environ.get("MIRROR_TEST_REGISTRY_BIN", "/usr/bin/docker-registry")

_ACCESS_RE = re.compile(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ')
_MARKER_PREFIX = "/v2/?__support_"  # readiness probes and sync markers; never counted
_SYNC_PATH = _MARKER_PREFIX + "sync="
_READY_PATH = _MARKER_PREFIX + "ready=1"

_live: set[Registry] = set()  # strong refs: a forgotten registry is killed at exit
_live_lock = threading.Lock()


@dataclass(frozen=True)
class AccessEntry:
    """One request as recorded in the registry's access log."""

    method: str
    path: str
    status: int


def registry_available() -> bool:
    """True if the docker-registry binary is installed."""
    return shutil.which(REGISTRY_BINARY) is not None


class Registry:
    """A distribution registry subprocess rooted at ``root`` listening on ``127.0.0.1:port``."""

    def __init__(self, root: Path, *, token: TokenServer | None = None, port: int = 0) -> None:
        self.root = root
        self.token = token
        self.port = port or free_port()
        self.storage_dir = root / "storage"
        self.config_path = root / "config.yml"
        self.access_log_path = root / "access.log"
        self.log_path = root / "registry.log"
        self._secret = secrets.token_hex(16)
        self._offset = 0
        self._proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self._config())

    # -- addresses --------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, as used in image references."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle --------------------------------------------------------------------------

    def _config(self) -> str:
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": self.host, "secret": self._secret},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.token is not None:
            config["auth"] = {
                "token": {
                    "realm": self.token.realm,
                    "service": self.token.service,
                    "issuer": self.token.issuer,
                    "rootcertbundle": str(self.token.cert_path),
                }
            }
        return json.dumps(config, indent=2) + "\n"  # JSON is valid YAML

    def start(self, timeout: float = 15.0) -> Registry:
        """Start the process (same port and storage as before) and wait until it serves."""
        if self.running:
            return self
        with open(self.access_log_path, "ab") as out, open(self.log_path, "ab") as err:
            self._proc = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        with _live_lock:
            _live.add(self)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RuntimeError(f"registry exited with {code}; log:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self._get_status(_READY_PATH) in (200, 401):
                    return
            if time.monotonic() >= deadline:
                self.kill()
                raise TimeoutError(
                    f"registry on {self.host} not ready in {timeout}s; log:\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _get_status(self, path: str) -> int:
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=2)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with _live_lock:
            _live.discard(self)

    def kill(self) -> None:
        """SIGKILL the process and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        with _live_lock:
            _live.discard(self)

    def restart(self) -> None:
        """Stop and start again on the same port with the same storage."""
        self.stop()
        self.start()

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- logs and counts --------------------------------------------------------------------

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the registry's own (stderr) log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _sync(self, timeout: float = 5.0) -> None:
        """Make a marker request and wait until it is logged.

        Access-log lines are written just after a response is sent, so a count taken right
        after a request could miss it; once the marker is logged, earlier requests are too.
        """
        marker = secrets.token_hex(8)
        with contextlib.suppress(OSError, http.client.HTTPException):
            self._get_status(_SYNC_PATH + marker)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if marker.encode() in self.access_log_path.read_bytes()[self._offset :]:
                    return
                time.sleep(0.01)

    def requests(self, *, sync: bool = True) -> list[AccessEntry]:
        """Requests logged since the last `reset_counts()` (marker requests excluded)."""
        if sync and self.running:
            self._sync()
        try:
            data = self.access_log_path.read_bytes()[self._offset :]
        except FileNotFoundError:
            return []
        entries: list[AccessEntry] = []
        for line in data.decode(errors="replace").splitlines():
            match = _ACCESS_RE.search(line)
            if match is None or match.group(2).startswith(_MARKER_PREFIX):
                continue
            entries.append(AccessEntry(match.group(1), match.group(2), int(match.group(3))))
        return entries

    def count(self, method: str, path_contains: str = "", *, status: int | None = None) -> int:
        """Count logged requests with ``method`` whose path contains ``path_contains``."""
        return sum(
            1
            for e in self.requests()
            if e.method == method.upper()
            and path_contains in e.path
            and (status is None or e.status == status)
        )

    def reset_counts(self) -> None:
        """Make later `requests()`/`count()` only see requests from now on."""
        if self.running:
            self._sync()
        try:
            self._offset = self.access_log_path.stat().st_size
        except FileNotFoundError:
            self._offset = 0


def start_registry(
    workdir: Path, *, token: TokenServer | None = None, timeout: float = 15.0
) -> Registry:
    """Create and start a registry rooted at ``workdir`` (optionally with token auth)."""
    return Registry(workdir, token=token).start(timeout)


@atexit.register
def _kill_leftovers() -> None:
    with _live_lock:
        leftovers = list(_live)
    for registry in leftovers:
        with contextlib.suppress(Exception):
            registry.kill()
