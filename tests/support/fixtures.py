"""Pytest fixtures for integration tests (registered via ``pytest_plugins`` in conftest).

Expensive servers live for the whole session (``*_session`` fixtures); the short names that
tests use are function-scoped views of them that make sure the server runs again (a previous
test may have stopped or killed it) and reset its counters, so every test starts clean:

* ``registry``: plain distribution registry (no auth);
* ``token_server`` + ``auth_registry``: registry with ``auth: token``;
* ``registry_factory``: fresh registries a test may break freely (stopped at teardown);
* ``faulty_proxy`` (in front of ``registry``) and ``proxy_factory``;
* ``skopeo``: runs skopeo with an isolated auth file and permissive policy.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.proxy import FaultyProxy
from tests.support.registry import Registry, registry_available, start_registry
from tests.support.tokenserver import TokenServer

SKOPEO = shutil.which("skopeo")


class Skopeo:
    """Runs ``skopeo`` with its own auth file and an accept-anything signature policy."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.policy = workdir / "policy.json"
        self.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        self.auth_file = workdir / "auth.json"
        self.auth_file.write_text('{"auths": {}}')
        self.home = workdir / "home"  # keeps ~/.docker and ~/.config/containers out
        self.home.mkdir(exist_ok=True)

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``skopeo --policy P ARGS...``; raises with stderr on failure if ``check``."""
        assert SKOPEO is not None
        cmd = [SKOPEO, "--policy", str(self.policy), *args]
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(self.auth_file), "HOME": str(self.home)}
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, env=env, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr.decode()}"
            )
        return proc


def _need_registry() -> None:
    if not registry_available():
        pytest.skip("docker-registry binary not installed")


@pytest.fixture(scope="session")
def support_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide scratch directory for the support servers."""
    return tmp_path_factory.mktemp("support")


@pytest.fixture(scope="session")
def registry_session(support_dir: Path) -> Iterator[Registry]:
    """The session's plain registry (prefer the function-scoped ``registry``)."""
    _need_registry()
    reg = start_registry(support_dir / "registry-plain")
    yield reg
    reg.stop()


@pytest.fixture
def registry(registry_session: Registry) -> Registry:
    """The shared plain registry, running, with access-log counts reset."""
    registry_session.start()
    registry_session.reset_counts()
    return registry_session


@pytest.fixture(scope="session")
def token_server_session(support_dir: Path) -> Iterator[TokenServer]:
    """The session's token server (prefer the function-scoped ``token_server``)."""
    server = TokenServer(support_dir / "token-server")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def token_server(token_server_session: TokenServer) -> TokenServer:
    """The shared token server, running, with its issued-token records cleared."""
    token_server_session.start()
    token_server_session.reset()
    return token_server_session


@pytest.fixture(scope="session")
def auth_registry_session(
    support_dir: Path, token_server_session: TokenServer
) -> Iterator[Registry]:
    """The session's token-auth registry (prefer the function-scoped ``auth_registry``)."""
    _need_registry()
    reg = start_registry(support_dir / "registry-auth", token=token_server_session)
    yield reg
    reg.stop()


@pytest.fixture
def auth_registry(auth_registry_session: Registry, token_server: TokenServer) -> Registry:
    """The shared registry with ``auth: token`` (user mirror-user / s3cret), counts reset."""
    auth_registry_session.start()
    auth_registry_session.reset_counts()
    return auth_registry_session


RegistryFactory = Callable[..., Registry]


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """``make(token=None) -> Registry``: fresh started registries, stopped at teardown."""
    _need_registry()
    made: list[Registry] = []
    counter = itertools.count()

    def make(token: TokenServer | None = None) -> Registry:
        reg = start_registry(tmp_path / f"registry-{next(counter)}", token=token)
        made.append(reg)
        return reg

    yield make
    for reg in made:
        reg.stop()


ProxyFactory = Callable[..., FaultyProxy]


@pytest.fixture
def proxy_factory() -> Iterator[ProxyFactory]:
    """``make(target: str | Registry, **kw) -> FaultyProxy`` (started; stopped at teardown)."""
    made: list[FaultyProxy] = []

    def make(target: str | Registry, **kw: object) -> FaultyProxy:
        url = target.url if isinstance(target, Registry) else target
        proxy = FaultyProxy(url, **kw)  # type: ignore[arg-type]
        made.append(proxy)
        proxy.start()
        return proxy

    yield make
    for proxy in made:
        proxy.stop()


@pytest.fixture
def faulty_proxy(registry: Registry, proxy_factory: ProxyFactory) -> FaultyProxy:
    """A `FaultyProxy` in front of the plain ``registry`` (all faults off)."""
    return proxy_factory(registry)


@pytest.fixture(scope="session")
def skopeo(support_dir: Path) -> Skopeo:
    """A `Skopeo` runner; skips the test when skopeo is not installed."""
    if SKOPEO is None:
        pytest.skip("skopeo not installed")
    return Skopeo(support_dir / "skopeo")
