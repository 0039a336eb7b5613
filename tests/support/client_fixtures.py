"""pytest plugin: fixtures that provide real container clients (see `tests.support.clients`).

Add ``"tests.support.client_fixtures"`` to ``pytest_plugins``. Fixtures:

* ``dockerd_factory`` (session): ``dockerd_factory(mirrors, *, insecure_registries=None,
  fresh=True) -> Dockerd``. A dockerd's registry-mirrors are fixed at start, so one daemon is
  cached per mirror list (at most `DockerdFactory.max_running` alive, least recently used
  stopped first); ``fresh`` removes all its images before returning it.
* ``containerd_daemon`` (session) and ``containerd`` (function): a view of the session
  daemon in a new, isolated namespace with its own empty ``hosts_dir``.
* ``podman``, ``skopeo_client`` (function): private storage/config, removed afterwards.
* ``request_recorder`` (function): ``request_recorder(upstream_url) -> RequestRecorder``.

Every fixture skips the test when its binaries are missing, except under ``CI`` (set by the CI
runner), where a missing client is an error. When a test fails, the function-scoped drivers
print the tail of their log in the teardown section of the report.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence

import pytest

from tests.support.clients import (
    Containerd,
    Dockerd,
    Podman,
    RequestRecorder,
    Skopeo,
    missing_binaries,
)

_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()
_namespace_ids = itertools.count(1)


def require_clients(*names: str) -> None:
    """Skip (fail under CI) unless the named client binaries are installed."""
    missing = missing_binaries(*names)
    if missing:
        message = "container clients not installed: " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Remember each phase's report on the item (for log dumps of failed tests)."""
    report: pytest.TestReport = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORT_KEY, {})
    return any(r.failed for r in reports.values())


def _dump_log_on_failure(request: pytest.FixtureRequest, name: str, log: str) -> None:
    if _failed(request):
        lines = log.splitlines()[-150:]
        print(f"\n===== {name} log (last {len(lines)} lines)\n" + "\n".join(lines))


class DockerdFactory:
    """Starts (and caches, per mirror list) private dockerd instances."""

    max_running = 3

    def __init__(self) -> None:
        self._cache: OrderedDict[tuple[tuple[str, ...], tuple[str, ...] | None], Dockerd] = (
            OrderedDict()
        )
        self.start_times: list[float] = []

    def __call__(
        self,
        mirrors: Sequence[str],
        *,
        insecure_registries: Sequence[str] | None = None,
        fresh: bool = True,
    ) -> Dockerd:
        """A running dockerd with ``registry-mirrors = mirrors`` (started or reused)."""
        key = (
            tuple(m.rstrip("/") for m in mirrors),
            None if insecure_registries is None else tuple(insecure_registries),
        )
        daemon = self._cache.get(key)
        if daemon is not None and not daemon.running:
            del self._cache[key]
            daemon.stop()
            daemon = None
        if daemon is None:
            while len(self._cache) >= self.max_running:
                _, oldest = self._cache.popitem(last=False)
                oldest.stop()
            daemon = Dockerd(mirrors, insecure_registries=insecure_registries).start()
            assert daemon.start_seconds is not None
            self.start_times.append(daemon.start_seconds)
            self._cache[key] = daemon
        else:
            self._cache.move_to_end(key)
            if fresh:
                daemon.remove_all_images()
        return daemon

    def stop_all(self) -> None:
        """Stop every cached daemon."""
        while self._cache:
            _, daemon = self._cache.popitem()
            daemon.stop()


@pytest.fixture(scope="session")
def dockerd_factory() -> Iterator[DockerdFactory]:
    """Session-wide `DockerdFactory`; all its daemons are stopped at the end."""
    require_clients("dockerd", "docker", "containerd")
    factory = DockerdFactory()
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="session")
def containerd_daemon() -> Iterator[Containerd]:
    """One private containerd for the session (namespace ``test``)."""
    require_clients("containerd", "ctr")
    daemon = Containerd().start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def containerd(containerd_daemon: Containerd, request: pytest.FixtureRequest) -> Containerd:
    """The session containerd, seen through a fresh namespace with an empty hosts dir."""
    view = containerd_daemon.namespaced(f"t{next(_namespace_ids)}")

    def finish() -> None:
        _dump_log_on_failure(request, "containerd", view.log)
        if view.running:
            with contextlib.suppress(Exception):
                view.remove_all_images()

    request.addfinalizer(finish)
    return view


@pytest.fixture
def podman(request: pytest.FixtureRequest) -> Iterator[Podman]:
    """A `Podman` with private storage; removed after the test."""
    require_clients("podman", "skopeo")
    driver = Podman()
    try:
        yield driver
    finally:
        _dump_log_on_failure(request, "podman", driver.log)
        driver.close()


@pytest.fixture
def skopeo_client(request: pytest.FixtureRequest) -> Iterator[Skopeo]:
    """A `Skopeo` with private policy/config; removed after the test."""
    require_clients("skopeo")
    driver = Skopeo()
    try:
        yield driver
    finally:
        _dump_log_on_failure(request, "skopeo", driver.log)
        driver.close()


@pytest.fixture
def request_recorder() -> Iterator[Callable[[str], RequestRecorder]]:
    """Factory: ``request_recorder(upstream_url)`` -> a started `RequestRecorder`."""
    started: list[RequestRecorder] = []

    def make(upstream: str) -> RequestRecorder:
        recorder = RequestRecorder(upstream).start()
        started.append(recorder)
        return recorder

    try:
        yield make
    finally:
        for recorder in started:
            recorder.stop()
