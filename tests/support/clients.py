"""Drivers for real container clients (dockerd, containerd/ctr, podman, skopeo).

Every driver keeps all of its state in a private temporary directory (daemon data, sockets,
configuration, credentials, a transcript ``log``), never reads or writes machine-wide
configuration, and never leaves a process behind: daemons run in their own session/process
group, and `stop()` terminates the whole process tree (SIGTERM, then SIGKILL).

Client commands never raise on failure: they return a `subprocess.CompletedProcess` (text
mode) so tests can assert on exit codes and error messages. A command that runs longer than
``timeout`` (default `DEFAULT_TIMEOUT`, 120 s, env ``MIRROR_CLIENT_TIMEOUT``) has its whole
process group killed and comes back with return code `TIMEOUT_RETURNCODE` and a
``[clients] TIMEOUT`` line in stderr. Helpers that return parsed data (``image_platform``,
``image_config``...) raise `ClientError` with the command output and the driver's log.

Outbound traffic: by default every driver runs with ``HTTP(S)_PROXY`` pointing at a private
`EgressBlocker` (a loopback listener answering 403 to everything) and ``NO_PROXY`` covering
loopback. Requests to 127.0.0.1/localhost mirrors go direct; a fallback to the real upstream
(``registry-1.docker.io``, ``ghcr.io``...) fails at once without a DNS lookup, and is recorded
in ``driver.egress.attempts`` so a test can assert that a client did not bypass the mirror.

Platforms are written ``os/arch[/variant]``: ``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.net import LOOPBACK, ThreadedAiohttpServer, forwarding_app

DEFAULT_TIMEOUT = float(os.environ.get("MIRROR_CLIENT_TIMEOUT", "120"))
TIMEOUT_RETURNCODE = -9
KEEP_DIRS = os.environ.get("MIRROR_KEEP_CLIENT_DIRS", "") not in ("", "0")

# /usr/local/bin/docker on the dev machine is a different (28.x) CLI: always use Debian's.
DOCKER_CLI = os.environ.get("MIRROR_TEST_DOCKER_CLI", "/usr/bin/docker")
DOCKERD = os.environ.get("MIRROR_TEST_DOCKERD", "/usr/sbin/dockerd")
CONTAINERD = os.environ.get("MIRROR_TEST_CONTAINERD", "/usr/bin/containerd")
CTR = os.environ.get("MIRROR_TEST_CTR", "/usr/bin/ctr")
PODMAN = os.environ.get("MIRROR_TEST_PODMAN", "/usr/bin/podman")
SKOPEO = os.environ.get("MIRROR_TEST_SKOPEO", "/usr/bin/skopeo")

BINARIES: dict[str, str] = {
    "dockerd": DOCKERD,
    "docker": DOCKER_CLI,
    "containerd": CONTAINERD,
    "ctr": CTR,
    "podman": PODMAN,
    "skopeo": SKOPEO,
}

# Where each client-facing registry name really lives (what `server` in hosts.toml names).
REGISTRY_SERVERS: dict[str, str] = {"docker.io": "https://registry-1.docker.io"}

_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_UNIX_SOCKET_PATH = 107
_TRANSPORTS = (
    "docker://",
    "oci:",
    "oci-archive:",
    "dir:",
    "docker-archive:",
    "docker-daemon:",
    "containers-storage:",
)

_T = TypeVar("_T")


class ClientError(RuntimeError):
    """A client command that had to succeed failed (message has its output and the log)."""


def missing_binaries(*names: str) -> list[str]:
    """The names (keys of `BINARIES`) whose executable is not installed."""
    missing = []
    for name in names or tuple(BINARIES):
        path = BINARIES[name]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            missing.append(f"{name} ({path})")
    return missing


def format_platform(os_name: str, arch: str, variant: str | None = None) -> str:
    """``linux``, ``arm``, ``v7`` -> ``linux/arm/v7`` (variant left out when empty)."""
    return "/".join([os_name, arch] + ([variant] if variant else []))


def config_platform(config: Mapping[str, Any]) -> str:
    """``os/arch[/variant]`` of an image config (or a descriptor's ``platform``) object."""
    return format_platform(
        str(config.get("os", "")), str(config.get("architecture", "")), config.get("variant")
    )


def describe(result: subprocess.CompletedProcess[Any], log: str = "", tail: int = 60) -> str:
    """A readable dump of a command result (and the last ``tail`` lines of ``log``)."""
    args = result.args if isinstance(result.args, str) else " ".join(map(str, result.args))
    out = result.stdout if isinstance(result.stdout, str) else repr(result.stdout)[:2000]
    text = f"$ {args}\n[exit {result.returncode}]\n--- stdout\n{out}\n--- stderr\n{result.stderr}"
    if log:
        lines = log.splitlines()[-tail:]
        text += f"\n--- log (last {len(lines)} lines)\n" + "\n".join(lines)
    return text


def check(
    result: subprocess.CompletedProcess[_T], log: str = ""
) -> subprocess.CompletedProcess[_T]:
    """Return ``result`` if it exited 0, else raise `ClientError` describing it."""
    if result.returncode != 0:
        raise ClientError(describe(result, log))
    return result


# -- processes --------------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # "pid (comm) state ppid ..." -- comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (read from /proc), children first."""
    children = _children_map()
    result: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            result.append(child)
            todo.append(child)
    return result


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")  # zombies count as gone


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def terminate_tree(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Stop ``proc`` and everything it started: SIGTERM, wait, then SIGKILL the rest.

    Descendants are collected before signalling, because daemons (dockerd's containerd)
    move children into their own sessions, out of ``proc``'s process group.
    """
    if proc.poll() is not None and not descendants(proc.pid):
        return
    tree = descendants(proc.pid)
    _signal([proc.pid], signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + min(timeout, 10.0)
    while any(_alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    leftovers = [p for p in tree if _alive(p)]
    if proc.poll() is None or leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _signal([proc.pid, *leftovers, *descendants(proc.pid)], signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def processes_mentioning(marker: str) -> list[int]:
    """PIDs (other than ours) whose command line contains ``marker`` (e.g. a private dir)."""
    pids = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if needle in f.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return [pid for pid in pids if _alive(pid)]


def kill_stragglers(marker: str, timeout: float = 10.0) -> list[int]:
    """SIGTERM, then SIGKILL, processes whose command line mentions ``marker``.

    Used with a driver's unique private directory to catch children that outlived their
    parent (dockerd's containerd is in its own session and is orphaned if dockerd dies).
    Returns the PIDs found.
    """
    found = processes_mentioning(marker)
    if not found:
        return found
    _signal(found, signal.SIGTERM)
    deadline = time.monotonic() + timeout / 2
    while any(_alive(p) for p in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    _signal([p for p in found if _alive(p)], signal.SIGKILL)
    deadline = time.monotonic() + timeout / 2
    while any(_alive(p) for p in found) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def run_command(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    log_path: Path | None = None,
    text: bool = True,
    input_data: bytes | None = None,
) -> subprocess.CompletedProcess[Any]:
    """Run ``argv`` in its own process group; never raises for a failure or a timeout.

    On timeout the whole group is SIGKILLed and the result has return code
    `TIMEOUT_RETURNCODE` and a ``[clients] TIMEOUT`` line appended to stderr. The command and
    its output are appended to ``log_path`` (a transcript) when given.
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    args = [os.fspath(a) for a in argv]
    started = time.monotonic()
    proc = subprocess.Popen(
        args,
        stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(input_data, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _signal([*descendants(proc.pid)], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipes
            proc.kill()
            out, err = b"", b""
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
            proc.wait()
    elapsed = time.monotonic() - started
    returncode = TIMEOUT_RETURNCODE if timed_out else proc.returncode
    err_text = err.decode(errors="replace")
    if timed_out:
        err_text += f"\n[clients] TIMEOUT: killed after {timeout:.0f}s\n"
    stdout: Any = out.decode(errors="replace") if text else out
    if log_path is not None:
        shown = stdout if text else f"<{len(out)} bytes>"
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(
                f"$ {' '.join(args)}\n[exit {returncode} after {elapsed:.2f}s]\n"
                f"{_tail(shown, 4000)}{_tail(err_text, 4000)}\n"
            )
    return subprocess.CompletedProcess(args, returncode, stdout, err_text if text else err)


def _tail(text: str, limit: int) -> str:
    if len(text) > limit:
        text = "...\n" + text[-limit:]
    return text if not text or text.endswith("\n") else text + "\n"


def _short_tempdir(prefix: str, workdir: Path | None) -> Path:
    """A fresh directory; under /tmp by default so unix socket paths stay short."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        return workdir
    base = "/tmp" if os.path.isdir("/tmp") else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def _check_socket_path(path: Path) -> None:
    if len(str(path)) > _MAX_UNIX_SOCKET_PATH:
        raise ValueError(f"unix socket path too long ({len(str(path))} > 107): {path}")


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    prefix = str(path).rstrip("/")
    points = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) < 5:
                continue
            point = fields[4].encode().decode("unicode_escape")  # \040 etc.
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_under(path: Path) -> list[str]:
    """Unmount everything at or below ``path`` (lazily if busy); returns what was mounted.

    dockerd bind-mounts its data-root onto itself and only undoes that on a clean shutdown;
    containerd's overlayfs snapshotter mounts during unpack.
    """
    points = mounts_under(path)
    for point in points:
        if run_command(["umount", point], timeout=30).returncode != 0:
            run_command(["umount", "-l", point], timeout=30)
    return points


def _remove_tree(path: Path) -> None:
    if KEEP_DIRS:
        return
    for _ in range(5):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.2)


def _base_env(home: Path) -> dict[str, str]:
    """The environment clients run with: system PATH, private HOME, no inherited client vars."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().endswith("_PROXY")
        and not k.startswith(("DOCKER_", "CONTAINERS_", "REGISTRY_AUTH", "XDG_", "CONTAINERD_"))
    }
    env["PATH"] = _SYSTEM_PATH
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    env["XDG_DATA_HOME"] = str(home / ".local" / "share")
    env["XDG_RUNTIME_DIR"] = str(home / "run")
    env["DOCKER_CONFIG"] = str(home / ".docker")
    for sub in (".config", ".local/share", "run", ".docker"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return env


def _with_transport(ref: str) -> str:
    return ref if ref.startswith(_TRANSPORTS) else f"docker://{ref}"


# -- egress blocking --------------------------------------------------------------------------


class EgressBlocker:
    """A loopback HTTP(S) proxy that refuses everything with 403 and records what was tried.

    Give a client ``env()`` (``HTTP(S)_PROXY`` = this, ``NO_PROXY`` = loopback): loopback
    mirrors are reached directly, any other destination fails fast with "403 Forbidden"
    (Go clients: ``proxyconnect``/``Forbidden`` errors) instead of a DNS lookup and a timeout.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.attempts: list[str] = []
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="egress-blocker", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{LOOPBACK}:{self.port}"

    def env(self, no_proxy: Iterable[str] = ()) -> dict[str, str]:
        """Proxy environment variables (both spellings) routing non-loopback traffic here."""
        bypass = ",".join(["127.0.0.0/8", "127.0.0.1", "localhost", "::1", *no_proxy])
        env = {}
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            env[name] = env[name.lower()] = self.url
        env["NO_PROXY"] = env["no_proxy"] = bypass
        return env

    def hosts(self) -> list[str]:
        """The ``host:port`` (CONNECT) or URL targets that clients tried to reach."""
        with self._lock:
            return [a.split(" ")[1] if " " in a else a for a in self.attempts]

    def clear(self) -> None:
        """Forget recorded attempts."""
        with self._lock:
            self.attempts.clear()

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            data = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            line = data.split(b"\r\n", 1)[0].decode(errors="replace")
            request_line = " ".join(line.split(" ")[:2])
            with self._lock:
                self.attempts.append(request_line)
            body = f"mirror test sandbox: egress blocked ({request_line})\n".encode()
            with contextlib.suppress(OSError):
                conn.sendall(
                    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                    b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
                    b"" + body
                )

    def close(self) -> None:
        """Stop listening."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(5)


# -- request recording ------------------------------------------------------------------------


_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


# created at import time: web.AppKey() inspects the caller's frames for a module name and
# fails (UnboundLocalError) when created in a server thread's event loop


@dataclass
class RecordedRequest:
    """One request seen by a `RequestRecorder`."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    status: int | None = None

    @property
    def target(self) -> str:
        """Path plus ``?query`` as sent."""
        return self.path + (f"?{self.query}" if self.query else "")

    @property
    def params(self) -> dict[str, list[str]]:
        """The parsed query string."""
        return parse_qs(self.query, keep_blank_values=True)

    def header_values(self, name: str) -> list[str]:
        """All values of header ``name`` (repeated headers kept apart, in order)."""
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def accept(self) -> list[str]:
        """Media types from all Accept headers, comma lists split, parameters dropped."""
        types = []
        for value in self.header_values("Accept"):
            for part in value.split(","):
                media = part.split(";")[0].strip()
                if media:
                    types.append(media)
        return types

    def __str__(self) -> str:
        return f"{self.method} {self.target} -> {self.status}"


class RequestRecorder(ThreadedAiohttpServer):
    """A transparent streaming reverse proxy to ``upstream`` that records every request.

    Put it between a client and the mirror (or a plain registry) to see the exact paths,
    query strings (containerd's ``?ns=``) and headers (Accept) a client sends. The client's
    Host header is forwarded, so absolute Location URLs still point at the recorder.
    """

    def __init__(self, upstream: str, *, port: int = 0) -> None:
        super().__init__(self._build_app, port=port, name="request-recorder", shutdown_timeout=0.5)
        self.upstream = upstream.rstrip("/")
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def start(self, timeout: float = 10.0) -> RequestRecorder:
        """Start serving; returns self once the port listens."""
        super().start(timeout)
        return self

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (for image references and registries.conf)."""
        return f"{super().host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests seen so far."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the requests seen so far."""
        with self._lock:
            self._requests.clear()

    def matching(self, method: str | None = None, path_contains: str = "") -> list[RecordedRequest]:
        """Requests with ``method`` (any if None) whose path contains ``path_contains``."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and path_contains in r.path
        ]

    def summary(self) -> str:
        """One line per request, for assertion messages."""
        return "\n".join(str(r) for r in self.requests) or "<no requests>"

    def _build_app(self) -> web.Application:
        return forwarding_app(self._forward)

    async def _forward(
        self, request: web.Request, session: aiohttp.ClientSession
    ) -> web.StreamResponse:
        record = RecordedRequest(
            request.method, request.path, request.query_string, list(request.headers.items())
        )
        with self._lock:
            self._requests.append(record)
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        body = await request.read() if request.body_exists else None
        try:
            upstream = await session.request(
                request.method,
                URL(self.upstream + request.raw_path, encoded=True),
                headers=headers,
                data=body,
                allow_redirects=False,
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            )
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            record.status = 502
            return web.Response(status=502, text=f"recorder: upstream unreachable: {exc!r}")
        try:
            record.status = upstream.status
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP_BY_HOP:
                    response.headers.add(key, value)
            await response.prepare(request)
            if request.method != "HEAD":
                with contextlib.suppress(ConnectionError, aiohttp.ClientPayloadError):
                    async for chunk in upstream.content.iter_chunked(64 * 1024):
                        await response.write(chunk)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()
            return response
        finally:
            upstream.release()


# -- dockerd ----------------------------------------------------------------------------------


def _http_get_unix(sock_path: Path, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def _mirror_host(url: str) -> str:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    return parts.netloc


class Dockerd:
    """A private ``dockerd`` (20.10) with its own data-root, exec-root, socket and containerd.

    ``mirrors`` go to ``registry-mirrors`` (they apply to Docker Hub images only: ``docker
    pull busybox`` asks ``<mirror>/v2/library/busybox/...``; a mirror URL with a path is
    rejected by dockerd). An ``http://`` mirror works as is; its host is also listed in
    ``insecure-registries`` (for direct ``docker pull 127.0.0.1:PORT/...``) unless
    ``insecure_registries`` is given. One-shot: `stop()` removes the directory.
    The daemon uses the vfs storage driver and no networking (no bridge, no iptables), which
    is enough to pull and unpack images of any architecture (nothing is run).
    """

    def __init__(
        self,
        mirrors: Sequence[str] = (),
        *,
        insecure_registries: Sequence[str] | None = None,
        workdir: Path | None = None,
        block_egress: bool = True,
        no_proxy: Iterable[str] = (),
        debug: bool = False,
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.mirrors = [m.rstrip("/") for m in mirrors]
        if insecure_registries is None:
            insecure_registries = [_mirror_host(m) for m in self.mirrors if m.startswith("http:")]
        self.insecure_registries = list(insecure_registries)
        self.dir = _short_tempdir("dockerd-", workdir)
        self.instance_id = secrets.token_hex(4)  # containerd namespaces: [A-Za-z0-9] + [._-]
        self.socket_path = self.dir / "docker.sock"
        self.config_path = self.dir / "daemon.json"
        self.log_path = self.dir / "dockerd.log"
        self.cli_log_path = self.dir / "cli.log"
        self.debug = debug
        self.extra_config = dict(extra_config or {})
        self.egress: EgressBlocker | None = EgressBlocker() if block_egress else None
        self.start_seconds: float | None = None
        self.private_containerd: bool | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None
        self._env = _base_env(self.dir / "home")
        if self.egress is not None:
            self._env.update(self.egress.env(no_proxy))
        _check_socket_path(self.dir / "exec" / "containerd" / "containerd.sock.ttrpc")

    @property
    def host(self) -> str:
        """The ``unix://`` address for ``docker -H``."""
        return f"unix://{self.socket_path}"

    @property
    def running(self) -> bool:
        """True while the dockerd process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """The daemon's log (dockerd and its containerd) followed by the CLI transcript."""
        if self._final_log is not None:
            return self._final_log
        parts = []
        for path in (self.log_path, self.cli_log_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"===== {path.name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def daemon_config(self) -> dict[str, Any]:
        """The daemon.json written at `start()`."""
        config: dict[str, Any] = {
            "storage-driver": "vfs",
            "iptables": False,
            "ip6tables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "hosts": [self.host],
            "data-root": str(self.dir / "data"),
            "exec-root": str(self.dir / "exec"),
            "pidfile": str(self.dir / "docker.pid"),
            "deprecated-key-path": str(self.dir / "key.json"),  # not /etc/docker/key.json
            "registry-mirrors": self.mirrors,
            "insecure-registries": self.insecure_registries,
            # isolation even if a system containerd exists at /run/containerd (dockerd 20.10
            # attaches to it instead of starting its own private one)
            "containerd-namespace": f"moby-{self.instance_id}",
            "containerd-plugins-namespace": f"plugins-{self.instance_id}",
            "max-concurrent-downloads": 3,
            "debug": self.debug,
            "log-level": "debug" if self.debug else "info",
            "features": {"buildkit": False},
        }
        config.update(self.extra_config)
        return config

    def start(self, timeout: float = 60.0) -> Dockerd:
        """Write daemon.json, start dockerd and wait until its API answers ``/_ping``."""
        if self.running:
            return self
        if self._final_log is not None:
            raise ClientError("a stopped Dockerd cannot be started again (its dir is gone)")
        self.config_path.write_text(json.dumps(self.daemon_config(), indent=2))
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [DOCKERD, "--config-file", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
        _LIVE.add(self)
        deadline = started + timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                raise ClientError(f"dockerd exited with {code} during start:\n{self.log[-6000:]}")
            with contextlib.suppress(OSError, ValueError, IndexError):
                if _http_get_unix(self.socket_path, "/_ping")[0] == 200:
                    break
            if time.monotonic() > deadline:
                self.stop()
                raise ClientError(f"dockerd not ready after {timeout}s:\n{self.log[-6000:]}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - started
        self.private_containerd = "started new containerd process" in self.log_path.read_text(
            errors="replace"
        )
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd and its containerd (whole tree), keep the log, remove the directory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate_tree(proc, timeout)
        kill_stragglers(str(self.dir))
        unmount_under(self.dir)
        _LIVE.discard(self)
        if self._final_log is None and (proc is not None or self.dir.exists()):
            self._final_log = self.log
        if self.egress is not None:
            self.egress.close()
            self.egress = None
        _remove_tree(self.dir)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- CLI --------------------------------------------------------------------------------

    def cli(
        self, *args: str, timeout: float | None = None, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``/usr/bin/docker -H <this daemon> ARGS`` (never raises)."""
        full_env = dict(self._env)
        full_env.update(env or {})
        return run_command(
            [DOCKER_CLI, "-H", self.host, *args],
            env=full_env,
            timeout=timeout,
            log_path=self.cli_log_path,
        )

    def check(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Like `cli` but raises `ClientError` (with the daemon log) on failure."""
        return check(self.cli(*args, timeout=timeout), self.log)

    def pull(
        self, ref: str, platform: str | None = None, *, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``docker pull [--platform P] REF`` (output returned, never raises)."""
        args = ["pull"] + (["--platform", platform] if platform else []) + [ref]
        return self.cli(*args, timeout=timeout)

    def image_inspect(self, ref: str) -> dict[str, Any]:
        """``docker image inspect REF`` as a dict (raises `ClientError` if absent)."""
        data: list[dict[str, Any]] = json.loads(self.check("image", "inspect", ref).stdout)
        return data[0]

    def has_image(self, ref: str) -> bool:
        """True if ``ref`` is in the local image store."""
        return self.cli("image", "inspect", ref).returncode == 0

    def image_platform(self, ref: str) -> str:
        """``os/arch[/variant]`` of a local image, e.g. ``linux/arm/v7``."""
        info = self.image_inspect(ref)
        return format_platform(info["Os"], info["Architecture"], info.get("Variant"))

    def image_label(self, ref: str, key: str) -> str | None:
        """The value of image label ``key`` (None if absent)."""
        labels = (self.image_inspect(ref).get("Config") or {}).get("Labels") or {}
        value = labels.get(key)
        return None if value is None else str(value)

    def repo_digests(self, ref: str) -> list[str]:
        """``RepoDigests`` of a local image (``name@sha256:...``: the digest pulled by)."""
        return list(self.image_inspect(ref).get("RepoDigests") or [])

    def rmi(self, ref: str, *, force: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker rmi [-f] REF`` (never raises)."""
        return self.cli("rmi", *(["-f"] if force else []), ref)

    def remove_all_images(self) -> None:
        """Delete every local image (so the next pull goes to the registry again)."""
        ids = self.check("images", "-aq").stdout.split()
        if ids:
            self.check("rmi", "-f", *sorted(set(ids)))

    def info(self) -> dict[str, Any]:
        """``docker info`` as a dict (``RegistryConfig.Mirrors``, ``Driver``...)."""
        result: dict[str, Any] = json.loads(self.check("info", "--format", "{{json .}}").stdout)
        return result

    def manifest_inspect(
        self, ref: str, insecure: bool = True, *, verbose: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """``docker manifest inspect [--insecure] [-v] REF`` run by the CLI itself.

        The CLI talks to the registry named in ``ref`` directly (registry-mirrors do not
        apply), e.g. ``127.0.0.1:PORT/library/busybox:latest``. docker CLI 20.10 only
        accepts Docker schema2 manifests/lists here ("no such manifest" for OCI media types).
        """
        args = ["manifest", "inspect"] + (["--insecure"] if insecure else [])
        args += (["-v"] if verbose else []) + [ref]
        return self.cli(*args, env={"DOCKER_CLI_EXPERIMENTAL": "enabled"})


# -- containerd -------------------------------------------------------------------------------


def write_hosts_toml(
    hosts_dir: Path,
    registry: str,
    mirror_url: str,
    *,
    plain_http: bool = True,
    capabilities: Sequence[str] = ("pull", "resolve"),
    server: str | None = None,
    skip_verify: bool = False,
    override_path: bool = False,
) -> Path:
    """Write ``<hosts_dir>/<registry>/hosts.toml`` sending ``registry`` pulls to ``mirror_url``.

    ``mirror_url`` is ``127.0.0.1:PORT`` or a URL; without a scheme ``http://`` is used when
    ``plain_http`` (containerd 1.6 picks plain HTTP from the ``http://`` scheme of the host
    key; no other setting is needed). containerd adds ``?ns=<registry>`` to every request it
    sends to a mirror host and asks ``<url path>/v2/<name>/...``; with ``override_path`` the
    URL path replaces ``/v2`` (``http://h/v2/ghcr.io`` -> ``/v2/ghcr.io/<name>/...``).
    ``server`` (the fallback, tried after the mirror) defaults to the real registry, which
    the drivers' egress blocker makes fail fast.
    """
    if "://" not in mirror_url:
        mirror_url = ("http://" if plain_http else "https://") + mirror_url
    server = server or REGISTRY_SERVERS.get(registry, f"https://{registry}")
    caps = ", ".join(json.dumps(c) for c in capabilities)
    text = f'server = "{server}"\n\n[host."{mirror_url.rstrip("/")}"]\n  capabilities = [{caps}]\n'
    if skip_verify:
        text += "  skip_verify = true\n"
    if override_path:
        text += "  override_path = true\n"
    path = hosts_dir / registry / "hosts.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _overlay_works(scratch: Path) -> bool:
    """True if an overlay mount succeeds here (containerd's overlayfs snapshotter needs it)."""
    dirs = {name: scratch / name for name in ("lower", "upper", "work", "merged")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={dirs['lower']},upperdir={dirs['upper']},workdir={dirs['work']}"
    mounted = run_command(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(dirs["merged"])], timeout=10
    )
    if mounted.returncode != 0:
        return False
    run_command(["umount", str(dirs["merged"])], timeout=10)
    return True


_OCI_INDEXES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)


@dataclass
class _ContainerdDaemon:
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    egress: EgressBlocker | None = None
    start_seconds: float | None = None
    snapshotter: str = "overlayfs"
    final_log: str | None = None


class Containerd:
    """A private ``containerd`` (1.6) driven with ``ctr``; no CRI plugin, isolated content.

    Content sharing between namespaces is off (``content_sharing_policy = "isolated"``), so
    each namespace (`namespaced()`) is a fresh client state whose pulls really download.
    All methods act in ``self.namespace``.
    """

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        namespace: str = "test",
        snapshotter: str = "auto",
        block_egress: bool = True,
        no_proxy: Iterable[str] = (),
        debug: bool = True,
    ) -> None:
        directory = _short_tempdir("containerd-", workdir)
        self._d = _ContainerdDaemon(directory)
        self._d.egress = EgressBlocker() if block_egress else None
        self._requested_snapshotter = snapshotter
        self.debug = debug
        self.namespace = namespace
        self.hosts_dir = directory / "hosts" / namespace
        self.socket_path = directory / "containerd.sock"
        self.config_path = directory / "config.toml"
        self.log_path = directory / "containerd.log"
        self.ctr_log_path = directory / "ctr.log"
        self._env = _base_env(directory / "home")
        if self._d.egress is not None:
            self._env.update(self._d.egress.env(no_proxy))
        _check_socket_path(Path(str(self.socket_path) + ".ttrpc"))

    # -- daemon -----------------------------------------------------------------------------

    @property
    def dir(self) -> Path:
        """The daemon's private directory."""
        return self._d.dir

    @property
    def egress(self) -> EgressBlocker | None:
        """The egress blocker the daemon and ctr run behind (None if disabled)."""
        return self._d.egress

    @property
    def start_seconds(self) -> float | None:
        """How long `start()` took."""
        return self._d.start_seconds

    @property
    def snapshotter(self) -> str:
        """The snapshotter used for unpacking (``overlayfs`` or ``native``)."""
        return self._d.snapshotter

    @property
    def running(self) -> bool:
        """True while the containerd process is alive."""
        return self._d.proc is not None and self._d.proc.poll() is None

    @property
    def log(self) -> str:
        """The daemon log followed by the ctr transcript."""
        if self._d.final_log is not None:
            return self._d.final_log
        parts = []
        for path in (self.log_path, self.ctr_log_path):
            with contextlib.suppress(FileNotFoundError):
                parts.append(f"===== {path.name}\n" + path.read_text(errors="replace"))
        return "\n".join(parts)

    def config_toml(self) -> str:
        """The config.toml written at `start()`."""
        d = self.dir
        return (
            "version = 2\n"
            f'root = "{d / "root"}"\n'
            f'state = "{d / "state"}"\n'
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n\n'
            f'[grpc]\n  address = "{self.socket_path}"\n\n'
            f'[ttrpc]\n  address = "{self.socket_path}.ttrpc"\n\n'
            f'[debug]\n  address = "{d / "debug.sock"}"\n'
            f'  level = "{"debug" if self.debug else "info"}"\n\n'
            '[metrics]\n  address = ""\n\n'
            '[plugins."io.containerd.metadata.v1.bolt"]\n'
            '  content_sharing_policy = "isolated"\n'
        )

    def start(self, timeout: float = 30.0) -> Containerd:
        """Pick a snapshotter, write config.toml, start containerd, wait for the socket."""
        if self.running:
            return self
        if self._d.final_log is not None:
            raise ClientError("a stopped Containerd cannot be started again (its dir is gone)")
        snap = self._requested_snapshotter
        if snap == "auto":
            snap = "overlayfs" if _overlay_works(self.dir / "overlay-probe") else "native"
        self._d.snapshotter = snap
        self.config_path.write_text(self.config_toml())
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._d.proc = subprocess.Popen(
                [CONTAINERD, "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
            )
        _LIVE.add(self)
        while True:
            if self._d.proc.poll() is not None:
                code = self._d.proc.returncode
                self.stop()
                raise ClientError(f"containerd exited with {code}:\n{self.log[-6000:]}")
            if self.socket_path.exists():
                if self.ctr("version", timeout=10, namespace=None).returncode == 0:
                    break
            if time.monotonic() - started > timeout:
                self.stop()
                raise ClientError(f"containerd not ready after {timeout}s:\n{self.log[-6000:]}")
            time.sleep(0.02)
        self._d.start_seconds = time.monotonic() - started
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """Stop containerd (whole tree), keep the log, remove the directory."""
        proc, self._d.proc = self._d.proc, None
        if proc is not None:
            terminate_tree(proc, timeout)
        kill_stragglers(str(self.dir))
        unmount_under(self.dir)
        _LIVE.discard(self)
        if self._d.final_log is None:
            self._d.final_log = self.log
        if self._d.egress is not None:
            self._d.egress.close()
            self._d.egress = None
        _remove_tree(self.dir)

    def __enter__(self) -> Containerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def namespaced(self, namespace: str) -> Containerd:
        """A view of the same daemon acting in ``namespace``, with its own hosts dir."""
        view = copy.copy(self)
        view.namespace = namespace
        view.hosts_dir = self.dir / "hosts" / namespace
        return view

    # -- ctr --------------------------------------------------------------------------------

    def ctr(
        self,
        *args: str,
        namespace: str | bool | None = True,
        timeout: float | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``ctr -a SOCK [-n NS] ARGS`` (``namespace=True``: this view's; None: no -n)."""
        ns = self.namespace if namespace is True else namespace
        argv = [CTR, "-a", str(self.socket_path)] + (["-n", str(ns)] if ns else []) + list(args)
        return run_command(
            argv, env=self._env, timeout=timeout, log_path=self.ctr_log_path, text=text
        )

    def write_hosts_toml(
        self,
        hosts_dir: Path | None,
        registry: str,
        mirror_url: str,
        *,
        plain_http: bool = True,
        **kwargs: Any,
    ) -> Path:
        """`write_hosts_toml` into ``hosts_dir`` (None: this view's `hosts_dir`)."""
        return write_hosts_toml(
            hosts_dir or self.hosts_dir, registry, mirror_url, plain_http=plain_http, **kwargs
        )

    def pull(
        self,
        ref: str,
        *,
        hosts_dir: Path | None = None,
        platform: str | None = None,
        all_platforms: bool = False,
        user: str | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``ctr images pull --hosts-dir DIR [--platform P|--all-platforms] REF`` (no raise).

        ``ref`` must be fully qualified (``docker.io/library/x:tag``, ``ghcr.io/o/x:tag``);
        the registry part selects ``<hosts_dir>/<registry>/hosts.toml``.
        """
        args = ["images", "pull", "--hosts-dir", str(hosts_dir or self.hosts_dir)]
        args += ["--snapshotter", self.snapshotter]
        if platform:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        if user:
            args += ["--user", user]
        return self.ctr(*args, ref, timeout=timeout)

    def images(self) -> list[dict[str, str]]:
        """``ctr images ls`` rows: ref, type (media type), digest, platforms."""
        rows = []
        lines = check(self.ctr("images", "ls"), self.log).stdout.splitlines()
        for line in lines[1:]:
            cols = line.split()
            if len(cols) >= 5:
                rows.append(
                    {"ref": cols[0], "type": cols[1], "digest": cols[2], "platforms": cols[-2]}
                )
        return rows

    def image_target(self, ref: str) -> tuple[str, str]:
        """(media type, digest) the image name points at (an index or a manifest)."""
        for row in self.images():
            if row["ref"] == ref:
                return row["type"], row["digest"]
        raise ClientError(f"image {ref} not in namespace {self.namespace}:\n{self.log[-4000:]}")

    def has_image(self, ref: str) -> bool:
        """True if ``ref`` is an image name in this namespace."""
        return any(row["ref"] == ref for row in self.images())

    def content_digests(self) -> set[str]:
        """Digests of all blobs in this namespace's content store."""
        return set(check(self.ctr("content", "ls", "-q"), self.log).stdout.split())

    def content(self, digest: str) -> bytes:
        """The bytes of blob ``digest`` (``ctr content get``)."""
        result = self.ctr("content", "get", digest, text=False)
        check(result, self.log)
        data: bytes = result.stdout
        return data

    def _json(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.content(digest))
        return data

    def pulled_platforms(self, ref: str) -> list[str]:
        """Platforms of ``ref`` whose manifest and config were actually fetched.

        For an index this is the subset of its platforms present in the content store (one
        after ``--platform P``, all after ``--all-platforms``); for a single manifest it is
        the platform from its config.
        """
        media_type, digest = self.image_target(ref)
        present = self.content_digests()
        if media_type in _OCI_INDEXES:
            platforms = []
            for desc in self._json(digest).get("manifests", []):
                if desc["digest"] in present:
                    manifest = self._json(desc["digest"])
                    if manifest["config"]["digest"] in present:
                        platforms.append(config_platform(desc.get("platform", {})))
            return platforms
        return [config_platform(self._json(self._json(digest)["config"]["digest"]))]

    def image_config(self, ref: str, platform: str | None = None) -> dict[str, Any]:
        """The image config of ``ref`` (of ``platform``, or of the only pulled platform)."""
        media_type, digest = self.image_target(ref)
        if media_type in _OCI_INDEXES:
            present = self.content_digests()
            candidates = [
                d
                for d in self._json(digest).get("manifests", [])
                if d["digest"] in present
                and (platform is None or config_platform(d.get("platform", {})) == platform)
            ]
            if len(candidates) != 1:
                raise ClientError(
                    f"{len(candidates)} pulled manifests of {ref} match platform {platform!r}"
                )
            digest = candidates[0]["digest"]
        return self._json(self._json(digest)["config"]["digest"])

    def image_platform(self, ref: str) -> str:
        """``os/arch[/variant]`` of the single platform pulled for ``ref``."""
        return config_platform(self.image_config(ref))

    def image_label(self, ref: str, key: str, platform: str | None = None) -> str | None:
        """Label ``key`` from the image config (None if absent)."""
        labels = (self.image_config(ref, platform).get("config") or {}).get("Labels") or {}
        value = labels.get(key)
        return None if value is None else str(value)

    def rmi(self, ref: str) -> subprocess.CompletedProcess[str]:
        """``ctr images rm REF`` (never raises)."""
        return self.ctr("images", "rm", ref)

    def remove_all_images(self) -> None:
        """Delete every image of this namespace (content and snapshots are then GC'd)."""
        refs = [row["ref"] for row in self.images()]
        if refs:
            check(self.ctr("images", "rm", "--sync", *refs), self.log)


# -- podman -----------------------------------------------------------------------------------


def write_registries_conf(
    path: Path,
    registry: str,
    mirror_location: str,
    insecure: bool = True,
    *,
    mirror_by_digest_only: bool = False,
    append: bool = False,
) -> Path:
    """Write (or with ``append`` add to) a containers-registries.conf v2 file.

    ``registry`` (``docker.io``, ``ghcr.io``...) gets one mirror, ``mirror_location``
    (``host:port`` optionally followed by a path prefix, e.g. ``127.0.0.1:5000/ghcr.io``: the
    client then asks ``/v2/ghcr.io/<name>/...``). No scheme: ``insecure`` selects plain HTTP.
    """
    block = (
        f'[[registry]]\nlocation = "{registry}"\n\n'
        f'[[registry.mirror]]\nlocation = "{mirror_location}"\n'
        f"insecure = {str(insecure).lower()}\n"
    )
    if mirror_by_digest_only:
        block = block.replace(
            "\n\n[[registry.mirror]]", "\nmirror-by-digest-only = true\n\n[[registry.mirror]]"
        )
    if append and path.exists():
        text = path.read_text() + "\n" + block
    else:
        text = (
            'unqualified-search-registries = ["docker.io"]\n'
            'short-name-mode = "permissive"\n\n' + block
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


_MOUNT_NS_WORKS: bool | None = None
_BIND_SCRIPT = (
    'while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 97; shift 2; done; shift; exec "$@"'
)


def _mount_namespaces_work() -> bool:
    """True if ``unshare --mount`` plus a bind mount works here (root, CAP_SYS_ADMIN)."""
    global _MOUNT_NS_WORKS
    if _MOUNT_NS_WORKS is None:
        unshare = shutil.which("unshare", path=_SYSTEM_PATH)
        if unshare is None or os.geteuid() != 0:
            _MOUNT_NS_WORKS = False
        else:
            with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
                argv = [unshare, "--mount", "--propagation", "private", "sh", "-c"]
                probe = run_command([*argv, _BIND_SCRIPT, "sh", a, b, "--", "true"], timeout=10)
            _MOUNT_NS_WORKS = probe.returncode == 0
    return _MOUNT_NS_WORKS


def _isolation_prefix(binds: Sequence[tuple[Path, Path]]) -> list[str]:
    """argv prefix running a command in a private mount namespace with ``binds`` applied.

    Each ``(private, system)`` pair bind-mounts ``private`` over ``system``; a missing system
    directory is created first (podman/skopeo would create it anyway), except /etc ones.
    """
    args = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _BIND_SCRIPT, "sh"]
    for private, system in binds:
        private.mkdir(parents=True, exist_ok=True)
        if not system.exists():
            if str(system).startswith("/etc/"):
                continue
            system.mkdir(parents=True, exist_ok=True)
        args += [str(private), str(system)]
    return [*args, "--"]


def _write_policy(path: Path) -> Path:
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


class _ContainersTool:
    """Shared private configuration for the containers/image based tools (podman, skopeo)."""

    name = "containers-tool"

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        block_egress: bool = True,
        no_proxy: Iterable[str] = (),
        isolate_mounts: bool = True,
    ) -> None:
        self.dir = _short_tempdir(f"{self.name}-", workdir)
        self.log_path = self.dir / f"{self.name}.log"
        self.egress: EgressBlocker | None = EgressBlocker() if block_egress else None
        etc = self.dir / "etc-containers"
        (etc / "registries.conf.d").mkdir(parents=True, exist_ok=True)
        self.policy_path = _write_policy(etc / "policy.json")
        self.registries_d = etc / "registries.d"
        self.registries_d.mkdir(exist_ok=True)
        self.default_registries_conf = etc / "registries.conf"
        self.default_registries_conf.write_text(
            'unqualified-search-registries = ["docker.io"]\nshort-name-mode = "permissive"\n'
        )
        self.auth_file = self.dir / "auth.json"
        self.auth_file.write_text('{"auths": {}}\n')
        self.tmp_dir = self.dir / "tmp"
        self.tmp_dir.mkdir(exist_ok=True)
        self._env = _base_env(self.dir / "home")
        self._env.update(
            {
                "REGISTRY_AUTH_FILE": str(self.auth_file),
                "CONTAINERS_REGISTRIES_CONF": str(self.default_registries_conf),
                "TMPDIR": str(self.tmp_dir),
            }
        )
        if self.egress is not None:
            self._env.update(self.egress.env(no_proxy))
        self._closed = False
        # Private mount namespace: c/image's root-only blob-info cache (/var/lib/containers/
        # cache), podman's netavark run dir (/run/containers) and the system registries.conf.d
        # drop-ins and policy (/etc/containers) are replaced by private directories.
        self._prefix: list[str] = []
        if isolate_mounts and _mount_namespaces_work():
            binds = [
                (etc, Path("/etc/containers")),
                (self.dir / "var-lib-containers", Path("/var/lib/containers")),
                (self.dir / "run-containers", Path("/run/containers")),
            ]
            self._prefix = _isolation_prefix(binds)
        self.mounts_isolated = bool(self._prefix)

    @property
    def log(self) -> str:
        """Transcript of every command run with this driver and its output."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return getattr(self, "_final_log", "")

    def _run(
        self,
        argv: Sequence[str],
        *,
        registries_conf: Path | None = None,
        timeout: float | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[Any]:
        env = dict(self._env)
        if registries_conf is not None:
            env["CONTAINERS_REGISTRIES_CONF"] = str(registries_conf)
        return run_command(
            [*self._prefix, *argv], env=env, timeout=timeout, log_path=self.log_path, text=text
        )

    def close(self) -> None:
        """Remove the private directory (keeps `log` readable)."""
        if self._closed:
            return
        self._closed = True
        self._final_log = self.log
        if self.egress is not None:
            self.egress.close()
            self.egress = None
        _remove_tree(self.dir)


class Podman(_ContainersTool):
    """``podman`` (4.3) with private storage (vfs), config, registries.conf and auth.

    Runs as root with ``cgroup_manager = "cgroupfs"`` and ``events_logger = "file"`` (no
    systemd/journald here); everything lives under the driver's directory except the empty
    netavark run directory ``/run/containers/networks`` that podman 4.3 always creates.
    """

    name = "podman"

    def __init__(
        self,
        *,
        workdir: Path | None = None,
        block_egress: bool = True,
        no_proxy: Iterable[str] = (),
        isolate_mounts: bool = True,
    ) -> None:
        super().__init__(
            workdir=workdir,
            block_egress=block_egress,
            no_proxy=no_proxy,
            isolate_mounts=isolate_mounts,
        )
        d = self.dir
        self.root = d / "root"
        self.runroot = d / "runroot"
        self.containers_conf = d / "containers.conf"
        self.containers_conf.write_text(
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{d / "events.log"}"\n'
            f'tmp_dir = "{d / "libpod-tmp"}"\n'
            f'volume_path = "{d / "volumes"}"\n'
            'image_default_transport = "docker://"\n\n'
            "[network]\n"
            f'network_config_dir = "{d / "networks"}"\n'
        )
        self.storage_conf = d / "storage.conf"
        self.storage_conf.write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{self.root}"\nrunroot = "{self.runroot}"\n'
        )
        self._env.update(
            {
                "CONTAINERS_CONF": str(self.containers_conf),
                "CONTAINERS_STORAGE_CONF": str(self.storage_conf),
            }
        )

    def run(
        self, *args: str, registries_conf: Path | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``podman --root ... --runroot ... --storage-driver vfs ... ARGS`` (never raises)."""
        argv = [
            PODMAN,
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "vfs",
            "--tmpdir",
            str(self.dir / "libpod-tmp"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--network-config-dir",
            str(self.dir / "networks"),
            *args,
        ]
        return self._run(argv, registries_conf=registries_conf, timeout=timeout)

    def pull(
        self,
        ref: str,
        *,
        registries_conf: Path | None = None,
        arch: str | None = None,
        variant: str | None = None,
        os: str | None = None,
        platform: str | None = None,
        creds: str | None = None,
        tls_verify: bool | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``podman pull`` with the given registries.conf (mirrors) and platform selection.

        Note podman 4.3 retries a failed pull 3 times (1 s apart) on network errors.
        """
        args = ["pull", "--signature-policy", str(self.policy_path)]
        for flag, value in (("--arch", arch), ("--variant", variant), ("--os", os)):
            if value:
                args += [flag, value]
        if platform:
            args += ["--platform", platform]
        if creds:
            args += ["--creds", creds]
        if tls_verify is not None:
            args.append(f"--tls-verify={str(tls_verify).lower()}")
        return self.run(*args, ref, registries_conf=registries_conf, timeout=timeout)

    def image_inspect(self, ref: str) -> dict[str, Any]:
        """``podman image inspect REF`` (raises `ClientError` if absent)."""
        data: list[dict[str, Any]] = json.loads(
            check(self.run("image", "inspect", ref), self.log).stdout
        )
        return data[0]

    def has_image(self, ref: str) -> bool:
        """True if ``ref`` is in the private store."""
        return self.run("image", "exists", ref).returncode == 0

    def image_config(self, ref: str) -> dict[str, Any]:
        """The stored image config (read with skopeo: podman 4.3 inspect lacks the variant)."""
        image_id = self.image_inspect(ref)["Id"]
        store = f"containers-storage:[vfs@{self.root}+{self.runroot}]{image_id}"
        result = self._run([SKOPEO, "inspect", "--config", store])
        data: dict[str, Any] = json.loads(check(result, self.log).stdout)
        return data

    def image_platform(self, ref: str) -> str:
        """``os/arch[/variant]`` of a local image."""
        return config_platform(self.image_config(ref))

    def image_label(self, ref: str, key: str) -> str | None:
        """Label ``key`` of a local image (None if absent)."""
        labels = self.image_inspect(ref).get("Labels") or {}
        value = labels.get(key)
        return None if value is None else str(value)

    def rmi(self, ref: str) -> subprocess.CompletedProcess[str]:
        """``podman rmi -f REF`` (never raises)."""
        return self.run("rmi", "-f", ref)

    def write_registries_conf(
        self, path: Path, registry: str, mirror_location: str, insecure: bool = True
    ) -> Path:
        """Module-level `write_registries_conf`."""
        return write_registries_conf(path, registry, mirror_location, insecure)


# -- skopeo -----------------------------------------------------------------------------------


class Skopeo(_ContainersTool):
    """``skopeo`` (1.9) with a private accept-anything policy, registries.conf/.d and auth."""

    name = "skopeo"

    def run(
        self,
        *args: str,
        registries_conf: Path | None = None,
        timeout: float | None = None,
        override_arch: str | None = None,
        override_variant: str | None = None,
        override_os: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``skopeo --policy P --registries.d D --tmpdir T [--override-*] ARGS``."""
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        argv = [
            SKOPEO,
            "--policy",
            str(self.policy_path),
            "--registries.d",
            str(self.registries_d),
            "--tmpdir",
            str(self.tmp_dir),
            "--command-timeout",
            f"{int(timeout)}s",
        ]
        for flag, value in (
            ("--override-arch", override_arch),
            ("--override-variant", override_variant),
            ("--override-os", override_os),
        ):
            if value:
                argv += [flag, value]
        return self._run([*argv, *args], registries_conf=registries_conf, timeout=timeout + 10)

    def inspect(
        self,
        ref: str,
        raw: bool = False,
        creds: str | None = None,
        tls_verify: bool = False,
        *,
        config: bool = False,
        no_tags: bool = False,
        override_arch: str | None = None,
        override_variant: str | None = None,
        override_os: str | None = None,
        registries_conf: Path | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``skopeo inspect [--raw|--config] [--no-tags] REF`` (``docker://`` added if needed).

        Without ``raw``/``config``/``no_tags`` skopeo also lists ``/v2/<name>/tags/list``.
        """
        args = ["inspect"] + (["--raw"] if raw else []) + (["--config"] if config else [])
        args += ["--no-tags"] if no_tags else []
        if creds:
            args += ["--creds", creds]
        ref = _with_transport(ref)
        if ref.startswith("docker://"):
            args.append(f"--tls-verify={str(tls_verify).lower()}")
        return self.run(
            *args,
            ref,
            registries_conf=registries_conf,
            timeout=timeout,
            override_arch=override_arch,
            override_variant=override_variant,
            override_os=override_os,
        )

    def copy(
        self,
        src: str,
        dst: str,
        override_arch: str | None = None,
        override_variant: str | None = None,
        override_os: str | None = None,
        creds: str | None = None,
        *,
        dest_creds: str | None = None,
        all_images: bool = False,
        src_tls_verify: bool = False,
        dest_tls_verify: bool = False,
        format: str | None = None,
        preserve_digests: bool = False,
        registries_conf: Path | None = None,
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """``skopeo copy SRC DST`` (``docker://`` added if no transport; never raises).

        ``creds`` authenticate to the source, ``dest_creds`` to the destination.
        """
        args = ["copy", "--retry-times", "0"]
        if all_images:
            args.append("--all")
        if preserve_digests:
            args.append("--preserve-digests")
        if format:
            args += ["--format", format]
        if creds:
            args += ["--src-creds", creds]
        if dest_creds:
            args += ["--dest-creds", dest_creds]
        src, dst = _with_transport(src), _with_transport(dst)
        if src.startswith("docker://"):
            args.append(f"--src-tls-verify={str(src_tls_verify).lower()}")
        if dst.startswith("docker://"):
            args.append(f"--dest-tls-verify={str(dest_tls_verify).lower()}")
        return self.run(
            *args,
            src,
            dst,
            registries_conf=registries_conf,
            timeout=timeout,
            override_arch=override_arch,
            override_variant=override_variant,
            override_os=override_os,
        )

    def inspect_json(self, ref: str, **kwargs: Any) -> dict[str, Any]:
        """`inspect` parsed as JSON (raises `ClientError` on failure)."""
        data: dict[str, Any] = json.loads(check(self.inspect(ref, **kwargs), self.log).stdout)
        return data


# -- leftovers --------------------------------------------------------------------------------


class _LiveSet:
    """Drivers with running daemons; whatever is still running at exit gets stopped."""

    def __init__(self) -> None:
        self._items: dict[int, Dockerd | Containerd] = {}
        self._lock = threading.Lock()

    def add(self, item: Dockerd | Containerd) -> None:
        with self._lock:
            self._items[id(item)] = item

    def discard(self, item: Dockerd | Containerd) -> None:
        with self._lock:
            self._items.pop(id(item), None)

    def stop_all(self) -> None:
        with self._lock:
            items = list(self._items.values())
        for item in items:
            with contextlib.suppress(Exception):
                item.stop(timeout=10)


_LIVE = _LiveSet()


def _stop_leftovers() -> None:
    _LIVE.stop_all()


atexit.register(_stop_leftovers)
