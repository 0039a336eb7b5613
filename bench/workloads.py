"""The measurements, and the data each needs on the upstream.

Each workload alternates the systems run by run (round-robin, the order rotated every run so
no system always goes first) and records every run in `Results`; medians are taken by
`bench.report`. Clients are real processes (curl, skopeo, wrk) so the client side costs the
same for every system; concurrent curls are started blocked on reading their URL from stdin
(``curl -K -``) and released together, so process start-up is not timed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bench.data import (
    BenchImage,
    BlobFile,
    KiB,
    MiB,
    build_image,
    push_file,
    push_image,
    write_random_blob,
)
from bench.systems import ALL_SERVERS, CACHES, Lab, System

ACCEPT = (
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.oci.image.index.v1+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
)
CURL_FORMAT = "%{http_code} %{size_download} %{time_total}\\n"
CURL_TIMEOUT = 600
SKOPEO_TIMEOUT = 600
# the URL comes on stdin (-K -): each curl waits for it, fully started
CURL_ARGS: tuple[str, ...] = ("curl", "-s", "-o", "/dev/null", "-w", CURL_FORMAT)
CURL_ARGS += ("--max-time", str(CURL_TIMEOUT), "-K", "-")
MB = 1_000_000  # throughput figures are MB/s = 10^6 bytes per second

T = TypeVar("T")


class BenchError(Exception):
    """A run that failed (wrong status, short body, client error): recorded, not fatal."""


@dataclass(frozen=True)
class Plan:
    """Sizes, counts and durations of one benchmark run."""

    runs: int
    rss_runs: int
    clients: int
    warm_single: int
    warm_each: int
    big_layers: tuple[int, ...]
    small_count: int
    small_size: int
    herd_size: int
    rss_size: int
    wrk_seconds: int

    @classmethod
    def default(cls) -> Plan:
        """The full run (< 15 minutes on 2 cores)."""
        return cls(
            runs=5,
            rss_runs=3,
            clients=16,
            warm_single=256 * MiB,
            warm_each=16 * MiB,
            big_layers=(256 * MiB, 64 * MiB),
            small_count=50,
            small_size=100 * KiB,
            herd_size=64 * MiB,
            rss_size=1024 * MiB,
            wrk_seconds=10,
        )

    @classmethod
    def quick(cls) -> Plan:
        """A smoke check (~2 minutes): smaller sizes, 2 runs, 3 s of wrk."""
        return cls(
            runs=2,
            rss_runs=2,
            clients=16,
            warm_single=64 * MiB,
            warm_each=4 * MiB,
            big_layers=(64 * MiB, 16 * MiB),
            small_count=50,
            small_size=100 * KiB,
            herd_size=16 * MiB,
            rss_size=256 * MiB,
            wrk_seconds=3,
        )

    def describe(self) -> str:
        """Sizes in words, for the log."""
        big = "+".join(f"{s // MiB}" for s in self.big_layers)
        return (
            f"warm {self.warm_single // MiB} MiB and {self.clients} x {self.warm_each // MiB} MiB;"
            f" images {big} MiB and {self.small_count} x {self.small_size // KiB} KiB;"
            f" herd {self.herd_size // MiB} MiB; rss {self.rss_size // MiB} MiB"
            f" ({self.rss_runs} runs); wrk {self.wrk_seconds} s"
        )

    def with_runs(self, runs: int) -> Plan:
        """The same plan with ``runs`` runs (and at most that many RSS runs)."""
        return Plan(**{**self.__dict__, "runs": runs, "rss_runs": min(self.rss_runs, runs)})


@dataclass
class Results:
    """Every run's value, per figure and system, plus extras, run orders and errors."""

    runs: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    extras: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    orders: dict[str, list[list[str]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, figure: str, system: str, value: float | None) -> None:
        """Record one run of ``figure`` for ``system`` (None = the run failed)."""
        self.runs.setdefault(figure, {}).setdefault(system, []).append(value)

    def extra(self, figure: str, system: str, value: Any) -> None:
        """Record a per-run side observation (not a headline figure)."""
        self.extras.setdefault(figure, {}).setdefault(system, []).append(value)

    def order(self, workload: str, systems: Sequence[str]) -> None:
        """Record the system order of one run."""
        self.orders.setdefault(workload, []).append(list(systems))

    def error(self, message: str) -> None:
        """Record (and print) a failed run."""
        self.errors.append(message)
        log(f"  ERROR {message}")


def log(message: str) -> None:
    """Progress output (stderr, unbuffered)."""
    print(message, file=sys.stderr, flush=True)


def rotated(items: Sequence[T], i: int) -> list[T]:
    """``items`` rotated left by ``i``: run ``i`` starts with a different system."""
    k = i % len(items)
    return [*items[k:], *items[:k]]


# -- data on the upstream ------------------------------------------------------------------------

WARM_REPO = "bench/warm"
HERD_REPO = "bench/herd"
RSS_REPO = "bench/rss"


@dataclass
class Dataset:
    """What the selected workloads need, pushed to the upstream (local files deleted)."""

    warm_single: BlobFile | None = None
    warm_many: list[BlobFile] = field(default_factory=list)
    big: BenchImage | None = None
    small: BenchImage | None = None
    herd: BlobFile | None = None
    rss: BlobFile | None = None

    def describe(self) -> dict[str, Any]:
        """Digests and sizes, for the JSON."""
        out: dict[str, Any] = {}
        if self.warm_single:
            out["warm_single"] = {"digest": self.warm_single.digest, "size": self.warm_single.size}
        if self.warm_many:
            out["warm_many"] = [{"digest": b.digest, "size": b.size} for b in self.warm_many]
        for name, image in (("big", self.big), ("small", self.small)):
            if image is not None:
                out[name] = {
                    "ref": f"{image.repo}:{image.tag}",
                    "digest": image.digest,
                    "layers": [b.size for b in image.layers],
                    "total_size": image.total_size,
                }
        for name, blob in (("herd", self.herd), ("rss", self.rss)):
            if blob is not None:
                out[name] = {"digest": blob.digest, "size": blob.size}
        return out


def prepare(lab: Lab, plan: Plan, workloads: Sequence[str], workdir: Path, seed: int) -> Dataset:
    """Build and push what ``workloads`` need; files are removed once pushed."""
    rng = random.Random(seed)
    data = Dataset()
    url = lab.upstream.url
    workdir.mkdir(parents=True, exist_ok=True)

    def blob(name: str, size: int, repo: str) -> BlobFile:
        made = write_random_blob(workdir / name, size, rng)
        push_file(url, repo, made)
        made.path.unlink()
        return made

    if "warm" in workloads:
        log(f"  data: warm blobs (1 x {plan.warm_single // MiB} MiB, "
            f"{plan.clients} x {plan.warm_each // MiB} MiB)")  # fmt: skip
        data.warm_single = blob("warm-single", plan.warm_single, WARM_REPO)
        data.warm_many = [blob(f"warm-{i}", plan.warm_each, WARM_REPO) for i in range(plan.clients)]
    if "cold" in workloads or "manifest" in workloads:
        log(f"  data: images bench/big ({'+'.join(str(s // MiB) for s in plan.big_layers)} MiB)"
            f" and bench/small ({plan.small_count} x {plan.small_size // KiB} KiB)")  # fmt: skip
        data.small = build_image(
            workdir / "small", "bench/small", "latest",
            [plan.small_size] * plan.small_count, rng,
        )  # fmt: skip
        push_image(url, data.small)
        if "cold" in workloads:
            data.big = build_image(
                workdir / "big", "bench/big", "latest", list(plan.big_layers), rng
            )
            push_image(url, data.big)
        shutil.rmtree(workdir / "small", ignore_errors=True)
        shutil.rmtree(workdir / "big", ignore_errors=True)
    if "herd" in workloads:
        log(f"  data: herd blob ({plan.herd_size // MiB} MiB)")
        data.herd = blob("herd", plan.herd_size, HERD_REPO)
    if "rss" in workloads:
        log(f"  data: rss blob ({plan.rss_size // MiB} MiB)")
        data.rss = blob("rss", plan.rss_size, RSS_REPO)
    return data


def blob_url(system: System, repo: str, digest: str) -> str:
    """``http://HOST/v2/<repo>/blobs/<digest>`` on ``system``."""
    return f"{system.url}/v2/{repo}/blobs/{digest}"


# -- clients -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """One curl download: HTTP status, bytes, curl's own time, and when the process ended."""

    status: int
    size: int
    seconds: float
    done_at: float
    error: str = ""


async def _curl_one(proc: asyncio.subprocess.Process, url: str) -> Fetch:
    out, err = await proc.communicate(f'url = "{url}"\n'.encode())
    done = time.perf_counter()
    try:
        status, size, seconds = out.decode().split()
        return Fetch(int(status), int(size), float(seconds), done, err.decode(errors="replace"))
    except ValueError:
        return Fetch(0, 0, 0.0, done, f"rc={proc.returncode} {err.decode(errors='replace')}")


async def fetch_together(urls: Sequence[str]) -> tuple[float, list[Fetch]]:
    """GET every URL with its own curl, all released at the same instant.

    Returns (seconds from the release until the last curl exited, the fetches).
    """
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in urls:
            procs.append(
                await asyncio.create_subprocess_exec(
                    *CURL_ARGS,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            )
        await asyncio.sleep(0.2)  # every curl is now blocked reading its config from stdin
        start = time.perf_counter()
        fetches = await asyncio.wait_for(
            asyncio.gather(*(_curl_one(p, u) for p, u in zip(procs, urls, strict=True))),
            CURL_TIMEOUT + 30,
        )
        return max(f.done_at for f in fetches) - start, list(fetches)
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)


def fetch_sync(urls: Sequence[str]) -> tuple[float, list[Fetch]]:
    """`fetch_together` from synchronous code."""
    return asyncio.run(fetch_together(urls))


def check_fetches(fetches: Sequence[Fetch], size: int, what: str) -> None:
    """Raise `BenchError` unless every fetch got 200 and ``size`` bytes."""
    for f in fetches:
        if f.status != 200 or f.size != size:
            raise BenchError(
                f"{what}: status {f.status}, {f.size} of {size} bytes {f.error.strip()[:200]}"
            )


def skopeo_copy(host: str, image: BenchImage, dest: Path) -> float:
    """``skopeo copy docker://HOST/repo:tag dir:DEST``; returns wall seconds (checked)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
        f"docker://{host}/{image.repo}:{image.tag}", f"dir:{dest}",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, timeout=SKOPEO_TIMEOUT, check=False)
    seconds = time.perf_counter() - start
    try:
        if proc.returncode != 0:
            raise BenchError(f"skopeo exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
        for layer in image.layers:
            path = dest / layer.hex
            if not path.exists() or path.stat().st_size != layer.size:
                raise BenchError(f"skopeo copy: layer {layer.digest} missing or wrong size")
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    return seconds


_WRK_RPS = re.compile(r"Requests/sec:\s+([0-9.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def wrk(url: str, seconds: int) -> dict[str, float]:
    """``wrk -t1 -c16 -dNs`` with docker's Accept header; requests/s, totals and errors."""
    cmd = [
        "wrk", "-t1", "-c16", f"-d{seconds}s", "--timeout", "10s",
        "-H", f"Accept: {ACCEPT}", url,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, timeout=seconds + 60, check=False, text=True)
    rps = _WRK_RPS.search(proc.stdout)
    if proc.returncode != 0 or rps is None:
        raise BenchError(f"wrk exited {proc.returncode}: {proc.stdout[-300:]} {proc.stderr[-300:]}")
    total = _WRK_TOTAL.search(proc.stdout)
    non2xx = _WRK_NON2XX.search(proc.stdout)
    sock = _WRK_SOCKET.search(proc.stdout)
    result = {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)) if total else 0.0,
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(int(g) for g in sock.groups())) if sock else 0.0,
    }
    bad = result["non2xx"] + result["socket_errors"]
    if bad > 0.01 * max(result["requests"], 1):
        raise BenchError(f"wrk: {bad:.0f} of {result['requests']:.0f} requests failed")
    return result


def _status_kib(pid: int, key: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/PID/status, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


async def _sample_rss(pid: int, stop: asyncio.Event, samples: list[int]) -> None:
    """Append VmRSS (KiB) every 50 ms until ``stop`` is set."""
    while not stop.is_set():
        value = _status_kib(pid, "VmRSS")
        if value is not None:
            samples.append(value)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def settled_count(lab: Lab, method: str, needle: str, timeout: float = 15.0) -> int:
    """Upstream requests counted until the number stops changing (background downloads
    of a cache may end, and be logged, after its clients are served)."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        count = lab.upstream.count(method, needle)
        if count == last or time.monotonic() >= deadline:
            return count
        last = count
        time.sleep(0.5)


def upstream_requests(lab: Lab) -> dict[str, int]:
    """Requests the upstream logged since `reset_counts`, by method and kind."""
    counts: dict[str, int] = {}
    for entry in lab.upstream.registry.requests():
        kind = (
            "blob"
            if "/blobs/" in entry.path
            else "manifest"
            if "/manifests/" in entry.path
            else "other"
        )
        key = f"{entry.method} {kind}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# -- the workloads -----------------------------------------------------------------------------

Runner = Callable[[Lab, Dataset, Plan, Results, Path], None]


def _measure(results: Results, what: str, fn: Callable[[], T]) -> T | None:
    """Run one measurement; a `BenchError` (or timeout) is recorded and yields None."""
    try:
        return fn()
    except (BenchError, subprocess.TimeoutExpired, TimeoutError, RuntimeError) as exc:
        results.error(f"{what}: {exc}")
        return None


def run_warm(lab: Lab, data: Dataset, plan: Plan, results: Results, workdir: Path) -> None:
    """1. Warm blob: single 256 MiB GET (curl's MB/s), 16 x 16 MiB at once (aggregate MB/s)."""
    assert data.warm_single is not None
    single, many = data.warm_single, data.warm_many
    systems = list(ALL_SERVERS)
    for name in systems:
        system = lab.system(name)
        log(f"  warming {name}")

        def warm(system: System = system, name: str = name) -> None:
            _, fetches = fetch_sync([blob_url(system, WARM_REPO, single.digest)])
            check_fetches(fetches, single.size, f"warm-up {name}")
            _, fetches = fetch_sync([blob_url(system, WARM_REPO, b.digest) for b in many])
            check_fetches(fetches, plan.warm_each, f"warm-up {name}")

        _measure(results, f"warm-up {name}", warm)
    time.sleep(1.0)
    lab.upstream.reset_counts()
    for i in range(plan.runs):
        order = rotated(systems, i)
        results.order("warm_single", order)
        for name in order:
            system = lab.system(name)

            def one(system: System = system, name: str = name) -> float:
                _, fetches = fetch_sync([blob_url(system, WARM_REPO, single.digest)])
                check_fetches(fetches, single.size, f"warm single {name}")
                return fetches[0].size / fetches[0].seconds / MB

            value = _measure(results, f"warm single {name} run {i + 1}", one)
            results.add("warm_single_MBps", name, value)
            log(f"  warm single run {i + 1}/{plan.runs} {name:15s} {_fmt(value)} MB/s")
    for i in range(plan.runs):
        order = rotated(systems, i)
        results.order("warm_aggregate", order)
        for name in order:
            system = lab.system(name)

            def agg(system: System = system, name: str = name) -> float:
                urls = [blob_url(system, WARM_REPO, b.digest) for b in many]
                seconds, fetches = fetch_sync(urls)
                check_fetches(fetches, plan.warm_each, f"warm aggregate {name}")
                return sum(f.size for f in fetches) / seconds / MB

            value = _measure(results, f"warm aggregate {name} run {i + 1}", agg)
            results.add("warm_aggregate_MBps", name, value)
            log(f"  warm aggregate run {i + 1}/{plan.runs} {name:15s} {_fmt(value)} MB/s")
    gets = lab.upstream.count("GET", "/blobs/")
    results.extra("warm_upstream_blob_gets", "all", gets)
    if gets:
        results.notes.append(f"warm: {gets} upstream blob GETs while measuring (expected 0)")


def run_cold(lab: Lab, data: Dataset, plan: Plan, results: Results, workdir: Path) -> None:
    """2. Cold pull (skopeo copy) from an empty cache, big image and many small layers."""
    assert data.big is not None and data.small is not None
    systems = [*CACHES, "direct"]
    for figure, image in (("cold_big_s", data.big), ("cold_small_s", data.small)):
        for i in range(plan.runs):
            order = rotated(systems, i)
            results.order(figure, order)
            for name in order:
                system = lab.system(name)

                def pull(
                    system: System = system, image: BenchImage = image
                ) -> tuple[float, dict[str, int]]:
                    lab.isolate(system.name)
                    system.reset()
                    lab.upstream.reset_counts()
                    seconds = skopeo_copy(system.host, image, workdir / "pull")
                    time.sleep(0.3)
                    return seconds, upstream_requests(lab)

                got = _measure(results, f"{figure} {name} run {i + 1}", pull)
                value = got[0] if got else None
                results.add(figure, name, value)
                results.extra(figure[: -len("_s")] + "_upstream_requests", name, got and got[1])
                log(f"  {figure} run {i + 1}/{plan.runs} {name:15s} {_fmt(value)} s")


def run_herd(lab: Lab, data: Dataset, plan: Plan, results: Results, workdir: Path) -> None:
    """3. Herd: 16 clients GET one uncached blob at once; and one client alone, cold."""
    assert data.herd is not None
    blob = data.herd
    systems = list(CACHES)
    results.extra("herd_bytes", "all", blob.size * plan.clients)

    for i in range(plan.runs):
        order = rotated(systems, i)
        results.order("herd", order)
        for name in order:
            system = lab.system(name)

            def herd(system: System = system, name: str = name) -> tuple[float, int, int]:
                lab.isolate(name)
                system.reset()
                lab.upstream.reset_counts()
                url = blob_url(system, HERD_REPO, blob.digest)
                seconds, fetches = fetch_sync([url] * plan.clients)
                check_fetches(fetches, blob.size, f"herd {name}")
                gets = settled_count(lab, "GET", blob.hex)
                heads = lab.upstream.count("HEAD", blob.hex)
                return seconds, gets, heads

            got = _measure(results, f"herd {name} run {i + 1}", herd)
            results.add("herd_s", name, got[0] if got else None)
            results.add("herd_upstream_gets", name, float(got[1]) if got else None)
            results.extra("herd_upstream_heads", name, got[2] if got else None)
            log(
                f"  herd run {i + 1}/{plan.runs} {name:15s} "
                f"{_fmt(got[0] if got else None)} s, upstream GETs {got[1] if got else '-'}"
            )

            def single(system: System = system, name: str = name) -> float:
                lab.isolate(name)
                system.reset()
                seconds, fetches = fetch_sync([blob_url(system, HERD_REPO, blob.digest)])
                check_fetches(fetches, blob.size, f"cold single {name}")
                return seconds

            value = _measure(results, f"cold single {name} run {i + 1}", single)
            results.add("cold_single_s", name, value)
            log(f"  cold single run {i + 1}/{plan.runs} {name:15s} {_fmt(value)} s")


def run_manifest(lab: Lab, data: Dataset, plan: Plan, results: Results, workdir: Path) -> None:
    """4. Manifest requests/s (wrk -t1 -c16), by tag (within the TTL) and by digest."""
    assert data.small is not None
    image = data.small
    systems = list(CACHES)
    refs = (("manifest_tag_rps", image.tag), ("manifest_digest_rps", image.digest))
    for figure, ref in refs:
        for name in systems:
            system = lab.system(name)
            url = f"{system.url}/v2/{image.repo}/manifests/{ref}"

            def warm(url: str = url, name: str = name) -> None:
                proc = subprocess.run(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                     f"Accept: {ACCEPT}", url],
                    capture_output=True, text=True, timeout=60, check=False,
                )  # fmt: skip
                if proc.stdout.strip() != "200":
                    raise BenchError(f"manifest warm-up {name}: status {proc.stdout!r}")

            _measure(results, f"manifest warm-up {name}", warm)
        for i in range(plan.runs):
            order = rotated(systems, i)
            results.order(figure, order)
            for name in order:
                system = lab.system(name)
                url = f"{system.url}/v2/{image.repo}/manifests/{ref}"
                got = _measure(
                    results, f"{figure} {name} run {i + 1}", partial(wrk, url, plan.wrk_seconds)
                )
                results.add(figure, name, got["rps"] if got else None)
                results.extra(figure + "_detail", name, got)
                log(f"  {figure} run {i + 1}/{plan.runs} {name:15s} "
                    f"{_fmt(got['rps'] if got else None)} req/s")  # fmt: skip


def run_rss(lab: Lab, data: Dataset, plan: Plan, results: Results, workdir: Path) -> None:
    """5. Peak RSS while 16 clients pull one cold large blob (mirror and reference proxy)."""
    assert data.rss is not None
    blob = data.rss
    systems = ["mirror", "reference"]
    for i in range(plan.rss_runs):
        order = rotated(systems, i)
        results.order("rss", order)
        for name in order:
            system = lab.system(name)

            def rss(system: System = system, name: str = name) -> dict[str, float]:
                lab.isolate(name)
                system.reset()
                pid = system.pid()
                if pid is None:
                    raise BenchError(f"rss {name}: no process")
                idle = _status_kib(pid, "VmRSS") or 0
                lab.upstream.reset_counts()

                async def go() -> tuple[float, list[Fetch], list[int]]:
                    samples: list[int] = []
                    stop = asyncio.Event()
                    sampler = asyncio.create_task(_sample_rss(pid, stop, samples))
                    try:
                        url = blob_url(system, RSS_REPO, blob.digest)
                        seconds, fetches = await fetch_together([url] * plan.clients)
                    finally:
                        stop.set()
                        await sampler
                    return seconds, fetches, samples

                seconds, fetches, samples = asyncio.run(go())
                hwm = _status_kib(pid, "VmHWM") or 0
                check_fetches(fetches, blob.size, f"rss {name}")
                peak = max([hwm, *samples])
                return {
                    "peak_MiB": peak / 1024,
                    "hwm_MiB": hwm / 1024,
                    "sampled_max_MiB": max(samples, default=0) / 1024,
                    "idle_MiB": idle / 1024,
                    "seconds": seconds,
                    "upstream_gets": float(settled_count(lab, "GET", blob.hex)),
                }

            got = _measure(results, f"rss {name} run {i + 1}", rss)
            results.add("peak_rss_MiB", name, got["peak_MiB"] if got else None)
            results.extra("rss_detail", name, got)
            log(
                f"  rss run {i + 1}/{plan.rss_runs} {name:15s} "
                f"{_fmt(got['peak_MiB'] if got else None)} MiB peak"
                + (
                    f" ({got['seconds']:.1f} s, upstream GETs {got['upstream_gets']:.0f})"
                    if got
                    else ""
                )
            )


def _fmt(value: float | None) -> str:
    return "ERR" if value is None else f"{value:,.2f}"


WORKLOADS: dict[str, tuple[Runner, str]] = {
    "warm": (run_warm, "cached blob MB/s: one client on a big blob, 16 clients on 16 blobs"),
    "manifest": (run_manifest, "manifest requests/s by tag and by digest (wrk -t1 -c16)"),
    "cold": (run_cold, "cold pull (skopeo copy) of a big image and of 50 small layers"),
    "herd": (run_herd, "16 clients on one uncached blob: upstream GETs, time; one client"),
    "rss": (run_rss, "peak RSS while 16 clients pull one cold large blob"),
}
