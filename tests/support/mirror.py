"""The mirror under test, as a real `mirror serve` process or an in-process app.

``MirrorProcess`` writes a TOML config, runs ``python -m mirror serve``, and can be
stopped, killed with SIGKILL and restarted on the same port and data dir: what the
client and crash tests need. ``mirror_settings`` builds the same settings for the
in-process app used by the API tests.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.net import free_port, wait_for_port


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def render_config(settings: dict[str, Any]) -> str:
    """A TOML document of top-level keys and ``upstreams`` tables."""
    lines = []
    tables = {
        k: v
        for k, v in settings.items()
        if isinstance(v, list) and v and all(isinstance(t, dict) for t in v)
    }
    for key, value in settings.items():
        if key not in tables and not (isinstance(value, list) and key == "upstreams"):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, entries in tables.items():
        for entry in entries:
            lines.append(f"\n[[{key}]]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in entry.items()]
    return "\n".join(lines) + "\n"


def upstream(registry: str, url: str, *, default: bool = False, **extra: Any) -> dict[str, Any]:
    """An ``[[upstreams]]`` table; short timeouts and retries so failures are quick."""
    table: dict[str, Any] = {
        "registry": registry,
        "url": url,
        "default": default,
        "tag_ttl": "10m",
        "connect_timeout": "3s",
        "read_timeout": "10s",
        "retries": 1,
    }
    table.update(extra)
    return table


class MirrorProcess:
    """A `mirror serve` subprocess on a loopback port with its own data dir."""

    def __init__(self, workdir: Path, upstreams: list[dict[str, Any]], **settings: Any) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.data_dir = workdir / "data"
        self.config_path = workdir / "mirror.toml"
        self.log_path = workdir / "mirror.log"
        self.settings: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "data_dir": str(self.data_dir),
            "log_level": "debug",
            **settings,
            "upstreams": upstreams,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_toml = ""  # appended verbatim (lists, views)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> MirrorProcess:
        """Write the config and start serving; waits until /v2/ answers."""
        self.config_path.write_text(render_config(self.settings) + self.extra_toml)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mirror", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port("127.0.0.1", self.port, timeout)
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=5) as resp:
                assert resp.status == 200
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"mirror did not start: {exc}\n{self.log()}") from exc
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        """SIGKILL: the crash the cache must survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        """Everything the process logged."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, needle: str, timeout: float = 20.0) -> str:
        """Wait until the log contains ``needle``; returns the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            if needle in text:
                return text
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not logged within {timeout}s:\n{self.log()[-4000:]}")

    def temp_files(self) -> list[Path]:
        """Partial downloads on disk."""
        tmp = self.data_dir / "tmp"
        return sorted(tmp.iterdir()) if tmp.exists() else []

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self.data_dir / "blobs" / algorithm / hexpart[:2] / hexpart

    def db_rows(self, table: str, where: str = "1=1", *args: Any) -> list[tuple[Any, ...]]:
        """Rows of the metadata DB (read-only, works while the mirror runs)."""
        con = sqlite3.connect(f"file:{self.data_dir / 'mirror.db'}?mode=ro", uri=True)
        try:
            return con.execute(f"SELECT * FROM {table} WHERE {where}", args).fetchall()
        finally:
            con.close()
