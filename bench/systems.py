"""The systems compared, each a process on its own loopback port with its own temp dir.

- ``Upstream``: a ``docker-registry`` (distribution 2.8) holding the benchmark's images; it is
  also the ``direct`` system (cold pulls straight from it are the denominator).
- ``ReferenceProxy``: a second ``docker-registry`` configured as a pull-through cache
  (``proxy: remoteurl``) of the upstream.
- ``NginxCache``: nginx as registry caches built on it are configured: blobs cached forever
  under ``$uri`` with ``proxy_cache_lock``, manifests for 10 minutes under ``$uri$http_accept``.
- ``NginxSendfile``: nginx serving the upstream's blob files straight from its storage with
  ``sendfile on``: the physical limit of serving bytes from disk (page cache) here.
- ``Mirror``: ``python -m mirror serve`` with ``log_level = "warning"``.

Every system can ``reset()``: stop, wipe its cache and start again empty on the same port
(untimed, before a cold measurement). Every process runs in its own session and is killed
(process group) by `stop()`; `Lab` stops all of them on exit, Ctrl-C and exceptions included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

from tests.support.mirror import render_config
from tests.support.mirror import upstream as upstream_table
from tests.support.net import LOOPBACK, free_port
from tests.support.registry import Registry

NGINX_BINARY = shutil.which("nginx") or "/usr/sbin/nginx"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _wait_http_ok(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200 (or the process dies, or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout}s (last error: {last!r})")


def _kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process group of ``proc`` (it was started in its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM the process group, SIGKILL it if it lingers, and reap the process."""
    if proc is None:
        return
    if proc.poll() is None:
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)
            proc.wait(timeout)
    # workers (nginx) may outlive a master that died first: sweep the group regardless
    _kill_group(proc, signal.SIGKILL)


class System(ABC):
    """One server under test, on ``127.0.0.1:port``."""

    name: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{self.host}"

    @abstractmethod
    def start(self) -> None:
        """Start (no-op when running); returns once the system serves ``/v2/``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and reap every process of the system."""

    @abstractmethod
    def pid(self) -> int | None:
        """PID of the serving process (for memory readings)."""

    def wipe(self) -> None:  # noqa: B027 - a system without a cache has nothing to wipe
        """Delete the system's cache (called while stopped)."""

    def reset(self) -> None:
        """Stop, start again with an empty cache on the same port (untimed)."""
        self.stop()
        self.wipe()
        self.start()


class _RegistryProcess(Registry):
    """tests.support's Registry, with an optional ``proxy`` section in its config."""

    def __init__(self, root: Path, *, port: int, remote_url: str | None = None) -> None:
        self.remote_url = remote_url
        super().__init__(root, port=port)

    def _config(self) -> str:
        text = super()._config()
        if self.remote_url is None:
            return text
        import json

        config = json.loads(text)
        config["proxy"] = {"remoteurl": self.remote_url}
        config["log"]["level"] = "warn"
        return json.dumps(config, indent=2) + "\n"


class _RegistrySystem(System):
    """A system that is one docker-registry process (``self.registry``)."""

    registry: _RegistryProcess

    def start(self) -> None:
        self.registry.start(START_TIMEOUT)

    def stop(self) -> None:
        self.registry.stop(STOP_TIMEOUT)

    def pid(self) -> int | None:
        proc = self.registry._proc
        return proc.pid if proc is not None else None


class Upstream(_RegistrySystem):
    """The origin registry; as a system (``direct``) it is what cold pulls are divided by."""

    name = "direct"
    label = "direct (upstream)"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.registry = _RegistryProcess(root, port=self.port)

    @property
    def storage_dir(self) -> Path:
        """The registry's filesystem storage root."""
        return self.registry.storage_dir

    def reset(self) -> None:
        """The upstream is never emptied."""

    def reset_counts(self) -> None:
        """Count requests from now on."""
        self.registry.reset_counts()

    def count(self, method: str, path_contains: str) -> int:
        """Requests with ``method`` whose path contains ``path_contains`` since `reset_counts`."""
        return self.registry.count(method, path_contains)


class ReferenceProxy(_RegistrySystem):
    """distribution 2.8 as a pull-through cache (``proxy: remoteurl``)."""

    name = "reference"
    label = "reference proxy (distribution 2.8)"

    def __init__(self, root: Path, upstream: Upstream) -> None:
        super().__init__(root)
        self.upstream = upstream
        self.registry = _RegistryProcess(root, port=self.port, remote_url=upstream.url)

    def wipe(self) -> None:
        shutil.rmtree(self.registry.storage_dir, ignore_errors=True)
        self.registry.storage_dir.mkdir(parents=True)


class _ProcessSystem(System):
    """A system that is one child process (and its group) of the harness."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's log, for error messages."""

    def _await_ready(self) -> None:
        """Wait until ``/v2/`` answers; stop and report the log tail if it never does."""
        try:
            _wait_http_ok(self.url + "/v2/", START_TIMEOUT, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        stop_process(proc)

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None


class _Nginx(_ProcessSystem):
    """An nginx master (foreground, ``daemon off``) with its own prefix, conf, pid and logs."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.conf_path = root / "nginx.conf"
        self.log_dir = root / "logs"

    @abstractmethod
    def _http_block(self) -> str:
        """The ``http { ... }`` contents specific to this system."""

    def _config(self) -> str:
        temp = self.root / "temp"
        return f"""# generated by bench/systems.py
user root;
worker_processes auto;
pid {self.root / "nginx.pid"};
error_log {self.log_dir / "error.log"} warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path {temp / "client"};
    proxy_temp_path {temp / "proxy"};
    fastcgi_temp_path {temp / "fastcgi"};
    uwsgi_temp_path {temp / "uwsgi"};
    scgi_temp_path {temp / "scgi"};
{self._http_block()}
}}
"""

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.root / "temp").mkdir(exist_ok=True)
        self.conf_path.write_text(self._config())
        cmd = [NGINX_BINARY, "-p", str(self.root), "-c", str(self.conf_path)]
        cmd += ["-e", str(self.log_dir / "error.log"), "-g", "daemon off;"]
        with (self.log_dir / "stderr.log").open("ab") as err:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        self._await_ready()

    def log_tail(self, lines: int = 20) -> str:
        """The end of nginx's error log."""
        text = ""
        for name in ("error.log", "stderr.log"):
            with contextlib.suppress(OSError):
                text += (self.log_dir / name).read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])


class NginxCache(_Nginx):
    """nginx ``proxy_cache`` in front of the upstream, configured like nginx registry caches."""

    name = "nginx-cache"
    label = "nginx proxy_cache"

    def __init__(self, root: Path, upstream: Upstream) -> None:
        super().__init__(root)
        self.upstream = upstream
        self.cache_dir = root / "cache"

    def _http_block(self) -> str:
        return f"""
    proxy_cache_path {self.cache_dir} levels=1:2 keys_zone=registry:256m
                     max_size=200g inactive=3650d use_temp_path=off;
    upstream origin {{
        server {self.upstream.host};
        keepalive 32;
    }}
    server {{
        listen {self.host};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header Accept $http_accept;
        proxy_buffering on;
        proxy_buffers 64 64k;
        proxy_busy_buffers_size 512k;
        proxy_read_timeout 900s;
        proxy_send_timeout 900s;
        proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;

        location ~ ^/v2/.*/blobs/sha256: {{
            proxy_pass http://origin;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 3650d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 900s;
            proxy_cache_lock_age 900s;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location ~ ^/v2/.*/manifests/ {{
            proxy_pass http://origin;
            proxy_cache registry;
            proxy_cache_key $uri$http_accept;
            proxy_cache_valid 200 10m;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 60s;
            add_header X-Cache-Status $upstream_cache_status;
        }}
        location / {{
            proxy_pass http://origin;
        }}
    }}"""

    def wipe(self) -> None:
        shutil.rmtree(self.cache_dir, ignore_errors=True)


class NginxSendfile(_Nginx):
    """nginx serving the upstream's blob files from disk with sendfile: the physical limit."""

    name = "nginx-sendfile"
    label = "nginx sendfile (files on disk)"

    def __init__(self, root: Path, upstream: Upstream) -> None:
        super().__init__(root)
        self.upstream = upstream

    def _http_block(self) -> str:
        blobs = self.upstream.storage_dir / "docker/registry/v2/blobs/sha256"
        return f"""
    server {{
        listen {self.host};
        location = /v2/ {{
            return 200 "{{}}";
        }}
        location ~ "^/v2/.+/blobs/sha256:(([0-9a-f]{{2}})[0-9a-f]{{62}})$" {{
            alias {blobs}/$2/$1/data;
        }}
    }}"""


class Mirror(_ProcessSystem):
    """The mirror under test: ``python -m mirror serve --config FILE``."""

    name = "mirror"
    label = "mirror"

    def __init__(self, root: Path, upstream: Upstream, *, tag_ttl: str = "10m") -> None:
        super().__init__(root)
        self.upstream = upstream
        self.data_dir = root / "data"
        self.config_path = root / "mirror.toml"
        self.log_path = root / "mirror.log"
        self.settings = {
            "listen": self.host,
            "data_dir": str(self.data_dir),
            "log_level": "warning",
            "upstreams": [
                upstream_table(
                    "bench.local",
                    upstream.url,
                    default=True,
                    tag_ttl=tag_ttl,
                    connect_timeout="10s",
                    read_timeout="120s",
                    retries=1,
                )
            ],
        }

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.config_path.write_text(render_config(self.settings))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mirror", "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
        self._await_ready()

    def wipe(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        """The end of the mirror's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


CACHES: tuple[str, ...] = ("mirror", "reference", "nginx-cache")
ALL_SERVERS: tuple[str, ...] = (*CACHES, "nginx-sendfile")


class Lab:
    """The upstream plus the systems, created (and started) on first use, all stopped at exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.upstream = Upstream(root / "upstream")
        self._systems: dict[str, System] = {"direct": self.upstream}

    def start_upstream(self) -> None:
        """Start the origin registry."""
        self.upstream.start()

    def system(self, name: str) -> System:
        """The named system, started."""
        system = self._systems.get(name)
        if system is None:
            root = self.root / name
            if name == "mirror":
                system = Mirror(root, self.upstream)
            elif name == "reference":
                system = ReferenceProxy(root, self.upstream)
            elif name == "nginx-cache":
                system = NginxCache(root, self.upstream)
            elif name == "nginx-sendfile":
                system = NginxSendfile(root, self.upstream)
            else:
                raise KeyError(name)
            self._systems[name] = system
        system.start()
        return system

    def isolate(self, name: str, settle: float = 0.3) -> None:
        """Stop every system but ``name`` and the upstream, so that no background work of
        another cache (distribution's proxy finishes its own store download after the
        client is served) competes for the CPU or shows up in the upstream's counts; and
        write back every dirty page (a cache's files, a client's output) so that no run pays
        for an earlier run's disk writes."""
        for other, system in self._systems.items():
            if other not in (name, "direct"):
                system.stop()
        os.sync()
        time.sleep(settle)

    def stop_all(self) -> None:
        """Stop every process that was started (never raises)."""
        for system in reversed(list(self._systems.values())):
            with contextlib.suppress(Exception):
                system.stop()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
