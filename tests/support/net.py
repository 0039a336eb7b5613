"""Loopback networking helpers shared by the test-support servers.

`ThreadedAiohttpServer` runs an aiohttp application in a dedicated thread with its own
event loop, so a server can be session-scoped and used at the same time by synchronous
tests, asynchronous tests (each running on its own loop) and external processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

LOOPBACK = "127.0.0.1"

AppFactory = Callable[[], web.Application]


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that is currently free on ``host``.

    The port is only reserved for the instant of the call; prefer binding port 0 directly
    when the server supports it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Poll until ``host:port`` accepts TCP connections.

    Raises:
        TimeoutError: if nothing accepts a connection within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"nothing accepted TCP connections on {host}:{port} within {timeout:.1f}s "
                f"(last error: {last_error!r})"
            )
        time.sleep(0.02)


async def until(condition: Callable[[], bool], what: str, within: float = 20.0) -> None:
    """Wait (without blocking the event loop) until ``condition()`` holds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for: {what}")
        await asyncio.sleep(0.01)


class ThreadedAiohttpServer:
    """An aiohttp application served from a background thread with its own event loop.

    ``app`` is either a ready `web.Application` or a zero-argument factory returning one. A
    factory is needed to restart the server (an application is bound to the loop it first ran
    on, and each `start()` creates a fresh thread and loop). The first `start()` binds port
    ``port`` (0 = pick a free one); later starts reuse the same port, so a test can make a
    server vanish (connection refused) and come back at the same address.
    """

    def __init__(
        self,
        app: web.Application | AppFactory,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        shutdown_timeout: float = 1.0,
        name: str = "aiohttp-server",
    ) -> None:
        self._app_source = app
        self._host = host
        self._port = port
        self._shutdown_timeout = shutdown_timeout
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._used_instance = False

    # -- properties -------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The interface the server listens on (127.0.0.1 by default)."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; valid after the first `start()` (or if given explicitly)."""
        if self._port == 0:
            raise RuntimeError(f"{self._name}: port unknown before the first start()")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://{self._host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's event loop while it runs (for ``run_coroutine_threadsafe``)."""
        return self._loop

    # -- lifecycle --------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        if isinstance(self._app_source, web.Application):
            if self._used_instance:
                raise RuntimeError(
                    f"{self._name}: restarting needs an application factory, not an instance"
                )
            self._used_instance = True
            return self._app_source
        return self._app_source()

    def start(self, timeout: float = 10.0) -> ThreadedAiohttpServer:
        """Start serving (no-op if already running); returns self once the port listens."""
        with self._lock:
            if self.running:
                return self
            self._ready.clear()
            self._error = None
            thread = threading.Thread(target=self._thread_main, name=self._name, daemon=True)
            self._thread = thread
            thread.start()
            if not self._ready.wait(timeout):
                raise TimeoutError(f"{self._name}: did not start within {timeout}s")
            if self._error is not None:
                thread.join(timeout)
                self._thread = None
                raise RuntimeError(f"{self._name}: failed to start") from self._error
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down cleanly and join its thread (no-op if not running)."""
        with self._lock:
            thread, loop, stop_event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            if loop is not None and stop_event is not None and thread.is_alive():
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"{self._name}: thread did not stop within {timeout}s")
            self._thread = None

    def restart(self) -> None:
        """Stop then start again on the same port."""
        self.stop()
        self.start()

    def __enter__(self) -> ThreadedAiohttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- thread body ------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); never escapes the thread
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
        finally:
            self._loop = None
            self._stop_event = None

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        app = self._make_app()
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=self._shutdown_timeout, handle_signals=False
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
            await site.start()
            if self._port == 0:
                for address in runner.addresses:
                    if isinstance(address, tuple):
                        self._port = int(address[1])
                        break
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await runner.cleanup()


ForwardHandler = Callable[[web.Request, aiohttp.ClientSession], Awaitable[web.StreamResponse]]
_FORWARD_SESSION = web.AppKey("forward_session", aiohttp.ClientSession)


def forwarding_app(handle: ForwardHandler) -> web.Application:
    """An app sending every request to ``handle(request, session)``, with one client
    session (no decompression, long reads) opened and closed with the app: the base of
    the test proxies."""
    app = web.Application(client_max_size=0)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        app[_FORWARD_SESSION] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=120),
        )
        yield
        await app[_FORWARD_SESSION].close()

    async def route(request: web.Request) -> web.StreamResponse:
        return await handle(request, request.app[_FORWARD_SESSION])

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", route)
    return app
