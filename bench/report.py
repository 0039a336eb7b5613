"""Medians, the table (figure x system), the target ratios (PASS/FAIL) and the JSON file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.workloads import Results

SYSTEM_ORDER = ("mirror", "reference", "nginx-cache", "nginx-sendfile", "direct")
SYSTEM_HEADERS = {
    "mirror": "mirror",
    "reference": "reference",
    "nginx-cache": "nginx cache",
    "nginx-sendfile": "nginx sendfile",
    "direct": "direct",
}

# figure key -> (label, number format)
FIGURES: dict[str, tuple[str, str]] = {
    "warm_single_MBps": ("warm blob, 1 client (MB/s)", "{:,.0f}"),
    "warm_aggregate_MBps": ("warm blobs, 16 clients aggregate (MB/s)", "{:,.0f}"),
    "cold_big_s": ("cold pull, big image (s)", "{:.2f}"),
    "cold_small_s": ("cold pull, 50 small layers (s)", "{:.2f}"),
    "herd_upstream_gets": ("herd: upstream GETs of the blob", "{:.0f}"),
    "herd_s": ("herd: 16 clients, last done (s)", "{:.2f}"),
    "cold_single_s": ("cold blob, 1 client alone (s)", "{:.2f}"),
    "manifest_tag_rps": ("manifest by tag (req/s)", "{:,.0f}"),
    "manifest_digest_rps": ("manifest by digest (req/s)", "{:,.0f}"),
    "peak_rss_MiB": ("peak RSS, 16 clients cold blob (MiB)", "{:,.1f}"),
}


def median(values: list[float | None]) -> float | None:
    """Median of the successful runs (None if none succeeded)."""
    ok = [v for v in values if v is not None]
    return statistics.median(ok) if ok else None


def medians(results: Results) -> dict[str, dict[str, float | None]]:
    """figure -> system -> median of its runs."""
    return {
        figure: {system: median(values) for system, values in per_system.items()}
        for figure, per_system in results.runs.items()
    }


@dataclass
class Ratio:
    """One stated target (or an informational comparison when ``passed`` is None)."""

    name: str
    value: float | None
    target: str
    passed: bool | None
    detail: str = ""

    @property
    def verdict(self) -> str:
        """PASS / FAIL / info / n/a (not measured)."""
        if self.value is None:
            return "n/a"
        if self.passed is None:
            return "info"
        return "PASS" if self.passed else "FAIL"


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _at_least(bound: float, value: float) -> bool:
    return value >= bound


def ratios(results: Results) -> list[Ratio]:
    """The ratios the targets are stated in, mirror first, other systems for comparison."""
    med = medians(results)

    def get(figure: str, system: str) -> float | None:
        return med.get(figure, {}).get(system)

    out: list[Ratio] = []
    measured = False

    def check(
        name: str, value: float | None, target: str, ok: Callable[[float], bool], detail: str = ""
    ) -> None:
        if value is None and not measured:
            return  # a workload that was not selected (--only)
        out.append(Ratio(name, value, target, None if value is None else ok(value), detail))

    def info(name: str, value: float | None, detail: str = "") -> None:
        if value is not None:
            out.append(Ratio(name, value, "", None, detail))

    for figure, label in (("warm_single_MBps", "warm single"), ("warm_aggregate_MBps", "warm 16x")):
        measured = figure in results.runs
        base = get(figure, "nginx-sendfile")
        value = _div(get(figure, "mirror"), base)
        check(f"{label}: mirror / nginx sendfile", value, ">= 0.95", lambda v: v >= 0.95)
        for other in ("reference", "nginx-cache"):
            info(f"{label}: {other} / nginx sendfile", _div(get(figure, other), base))
    for figure, label in (("cold_big_s", "cold pull big"), ("cold_small_s", "cold pull small")):
        measured = figure in results.runs
        base = get(figure, "direct")
        value = _div(get(figure, "mirror"), base)
        check(f"{label}: mirror / direct", value, "<= 1.10", lambda v: v <= 1.10)
        for other in ("reference", "nginx-cache"):
            info(f"{label}: {other} / direct", _div(get(figure, other), base))

    measured = "herd_s" in results.runs
    runs = results.runs.get("herd_upstream_gets", {}).get("mirror", [])
    gets = [v for v in runs if v is not None]
    check(
        "herd: mirror upstream GETs (every run)",
        max(gets) if gets else None,
        "== 1",
        lambda v: len(gets) == len(runs) and all(g == 1 for g in gets),
        detail="runs: " + ", ".join(f"{g:.0f}" for g in gets),
    )
    for other in ("reference", "nginx-cache"):
        info(f"herd: {other} upstream GETs (median)", get("herd_upstream_gets", other))
    value = _div(get("herd_s", "mirror"), get("herd_s", "nginx-cache"))
    check("herd time: mirror / nginx cache", value, "<= 1.00", lambda v: v <= 1.0)
    value = _div(get("herd_s", "mirror"), get("cold_single_s", "mirror"))
    check("herd time / single-client time: mirror", value, "<= 1.20", lambda v: v <= 1.2)
    for other in ("reference", "nginx-cache"):
        value = _div(get("herd_s", other), get("cold_single_s", other))
        info(f"herd time / single-client time: {other}", value)
    # The floor of any herd here: its bytes (16 clients x the blob) at the rate nginx's
    # sendfile delivers 16 warm blobs at once -- no download at all, the machine's limit.
    herd_bytes = (results.extras.get("herd_bytes", {}).get("all") or [None])[0]
    rate = get("warm_aggregate_MBps", "nginx-sendfile")
    if herd_bytes and rate:
        floor = herd_bytes / (rate * 1e6)
        info("herd floor: 16 clients' bytes at nginx sendfile's 16x rate (s)", floor)
        info(
            "herd floor / single-client time: mirror",
            _div(floor, get("cold_single_s", "mirror")),
            "a herd cannot beat this ratio on this machine",
        )

    for figure, label, target in (
        ("manifest_tag_rps", "manifest by tag", 10.0),
        ("manifest_digest_rps", "manifest by digest", 1.0),
    ):
        measured = figure in results.runs
        base = get(figure, "reference")
        value = _div(get(figure, "mirror"), base)
        check(f"{label}: mirror / reference", value, f">= {target:g}", partial(_at_least, target))
        info(f"{label}: nginx cache / reference", _div(get(figure, "nginx-cache"), base))

    measured = "peak_rss_MiB" in results.runs
    for system in ("mirror", "reference"):
        rss = [v for v in results.runs.get("peak_rss_MiB", {}).get(system, []) if v is not None]
        name = f"peak RSS: {system}, worst run (MiB)"
        if system == "mirror":
            check(name, max(rss) if rss else None, "< 150", lambda v: v < 150)
        else:
            info(name, max(rss) if rss else None)
    return out


def table(results: Results) -> str:
    """Medians as a figure x system table; '*' marks a median over fewer than all runs."""
    med = medians(results)
    systems = [s for s in SYSTEM_ORDER if any(s in per for per in results.runs.values())]
    width = max(len(label) for label, _ in FIGURES.values())
    cols = [max(12, len(SYSTEM_HEADERS[s])) for s in systems]
    lines = [
        f"{'median of runs':<{width}}  "
        + "  ".join(f"{SYSTEM_HEADERS[s]:>{c}}" for s, c in zip(systems, cols, strict=True))
    ]
    lines.append("-" * len(lines[0]))
    for figure, (label, fmt) in FIGURES.items():
        if figure not in results.runs:
            continue
        cells = []
        for system, col in zip(systems, cols, strict=True):
            runs = results.runs[figure].get(system)
            value = med[figure].get(system)
            if runs is None:
                cell = "-"
            elif value is None:
                cell = "ERR"
            else:
                cell = fmt.format(value) + ("*" if None in runs else "")
            cells.append(f"{cell:>{col}}")
        lines.append(f"{label:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def ratio_lines(items: list[Ratio]) -> str:
    """The target ratios, one a line, with PASS/FAIL."""
    width = max((len(r.name) for r in items), default=10)
    lines = []
    for r in items:
        value = "-" if r.value is None else f"{r.value:,.3f}"
        target = f"target {r.target}" if r.target else ""
        detail = f"  ({r.detail})" if r.detail else ""
        lines.append(f"  {r.verdict:>4}  {r.name:<{width}}  {value:>10}  {target}{detail}")
    return "\n".join(lines)


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout + proc.stderr).strip()


def machine_info() -> dict[str, Any]:
    """CPU, memory, kernel, Python and tool versions."""
    cpu = ""
    mem_kib = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "loadavg": loadavg(),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_total_GiB": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "tools": {
            "nginx": _run(["nginx", "-v"]) or _run(["/usr/sbin/nginx", "-v"]),
            "docker-registry": _run(["docker-registry", "--version"]),
            "wrk": _run(["wrk", "--version"]).splitlines()[0:1],
            "skopeo": _run(["skopeo", "--version"]),
            "curl": _run(["curl", "--version"]).splitlines()[0:1],
        },
    }


def loadavg() -> list[float]:
    """1-, 5- and 15-minute load averages (other work on the machine makes figures noisy)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def source_fingerprint(repo: Path) -> str:
    """sha256 over the mirror's Python sources and migrations, as they are on disk now
    (the work tree may be dirty, or change while the benchmark runs)."""
    h = hashlib.sha256()
    for path in sorted([*repo.glob("mirror/**/*.py"), *repo.glob("migrations/**/*.py")]):
        h.update(str(path.relative_to(repo)).encode() + b"\0")
        with contextlib.suppress(OSError):
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def git_info(repo: Path) -> dict[str, Any]:
    """Commit, branch, whether the work tree has changes (outside bench/), and the sources'
    fingerprint."""
    return {
        "source_fingerprint": source_fingerprint(repo),
        "commit": _run(["git", "-C", str(repo), "rev-parse", "HEAD"]),
        "branch": _run(["git", "-C", str(repo), "rev-parse", "--abbrev-ref", "HEAD"]),
        "dirty": bool(
            _run(["git", "-C", str(repo), "status", "--porcelain", "--", ".", ":!bench"])
        ),
    }


def write_json(document: dict[str, Any], paths: list[Path]) -> None:
    """Write the result document to every path (parents created)."""
    text = json.dumps(document, indent=2, default=str) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def document(results: Results, items: list[Ratio], *, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything: raw runs, medians, ratios, orders, errors, plus ``meta``."""
    return {
        **meta,
        "runs": results.runs,
        "medians": medians(results),
        "ratios": [asdict(r) | {"verdict": r.verdict} for r in items],
        "extras": results.extras,
        "orders": results.orders,
        "errors": results.errors,
        "notes": results.notes,
    }
