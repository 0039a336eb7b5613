"""``python -m bench``: the side-by-side benchmark of the mirror (see bench/README.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from bench import report
from bench.systems import NGINX_BINARY, Lab
from bench.workloads import WORKLOADS, Plan, Results, log, prepare

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
MIN_FREE = 10 * 1024**3
REQUIRED = {
    "docker-registry": "/usr/bin/docker-registry",
    "nginx": NGINX_BINARY,
    "wrk": "wrk",
    "skopeo": "skopeo",
    "curl": "curl",
}


def _missing_tools() -> list[str]:
    return [name for name, exe in REQUIRED.items() if shutil.which(exe) is None]


def ensure_tools() -> None:
    """Run bench/install-deps when a tool is missing; exit with a message if that fails."""
    missing = _missing_tools()
    if not missing:
        return
    log(f"missing: {', '.join(missing)}; running bench/install-deps")
    proc = subprocess.run([str(BENCH_DIR / "install-deps")], timeout=900, check=False)
    missing = _missing_tools()
    if proc.returncode != 0 or missing:
        sys.exit(
            f"bench: could not install {', '.join(missing) or 'dependencies'} "
            f"(bench/install-deps exited {proc.returncode}); install them by hand: "
            "apt-get install docker-registry nginx-light wrk skopeo curl"
        )


def check_disk(path: Path) -> None:
    """Abort unless ``path`` has at least 10 GiB free."""
    free = shutil.disk_usage(path).free
    if free < MIN_FREE:
        sys.exit(
            f"bench: only {free / 1024**3:.1f} GiB free in {path}; "
            f"the benchmark needs at least {MIN_FREE / 1024**3:.0f} GiB"
        )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    names = ", ".join(WORKLOADS)
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Side-by-side benchmark: the mirror vs distribution's proxy vs nginx.",
        epilog="workloads: " + "; ".join(f"{k}: {v[1]}" for k, v in WORKLOADS.items()),
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, 2 runs, 3 s wrk")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {names}")
    parser.add_argument("--runs", type=int, default=0, help="runs per system (default 5/2)")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, caches)")
    parser.add_argument("--seed", type=int, default=20240101, help="seed of the random data")
    args = parser.parse_args(argv)
    selected = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = [w for w in selected if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {names}")
    args.workloads = [w for w in WORKLOADS if w in selected]
    if args.runs < 0 or args.runs > 50:
        parser.error("--runs must be between 1 and 50")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads, print the table and ratios, write the JSON."""
    args = parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.default()
    if args.runs:
        plan = plan.with_runs(args.runs)
    ensure_tools()
    check_disk(Path("/tmp"))
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    load_before = report.loadavg()
    if load_before and load_before[0] > 1.0:
        log(f"bench: WARNING load average {load_before[0]:.2f} before starting: other work on "
            "this machine competes for its CPUs and makes the figures noisy")  # fmt: skip
    git_before = report.git_info(REPO_DIR)
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    results = Results()
    timings: dict[str, float] = {}
    interrupted = ""
    dataset: dict[str, object] = {}
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-", dir="/tmp"))
    log(f"bench: {', '.join(args.workloads)} ({'quick' if args.quick else 'full'}, "
        f"{plan.runs} runs) in {root}")  # fmt: skip
    log(f"plan: {plan.describe()}")
    try:
        with Lab(root) as lab:
            lab.start_upstream()
            t = time.monotonic()
            data = prepare(lab, plan, args.workloads, root / "data", args.seed)
            dataset = data.describe()
            timings["prepare"] = time.monotonic() - t
            for name in args.workloads:
                log(f"[{name}] {WORKLOADS[name][1]}")
                t = time.monotonic()
                WORKLOADS[name][0](lab, data, plan, results, root / "work")
                timings[name] = time.monotonic() - t
                log(f"[{name}] done in {timings[name]:.0f} s")
    except KeyboardInterrupt as exc:
        interrupted = str(exc) or "interrupted"
        log(f"bench: interrupted ({interrupted}); all processes stopped")
    finally:
        if args.keep:
            log(f"bench: kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    duration = time.monotonic() - t0

    items = report.ratios(results)
    if interrupted:
        print(f"\nINTERRUPTED ({interrupted}): partial results")
    print()
    print(report.table(results))
    print()
    print("targets (mirror) and comparisons:")
    print(report.ratio_lines(items))
    if results.notes:
        print("\nnotes:\n" + "\n".join(f"  {n}" for n in results.notes))
    if results.errors:
        print(f"\n{len(results.errors)} failed run(s):\n" + "\n".join(
            f"  {e[:300]}" for e in results.errors))  # fmt: skip
    phases = ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
    print(f"\nruntime {duration / 60:.1f} min ({phases})")
    git_after = report.git_info(REPO_DIR)
    if git_after["source_fingerprint"] != git_before["source_fingerprint"]:
        print(
            "WARNING the mirror's sources changed during the run: "
            f"{git_before['commit'][:12]} {git_before['source_fingerprint']} -> "
            f"{git_after['commit'][:12]} {git_after['source_fingerprint']}; "
            "later runs measured other code than earlier ones"
        )
    else:
        dirty = " (dirty work tree)" if git_after["dirty"] else ""
        print(
            f"mirror at {git_after['commit'][:12]}{dirty}, "
            f"sources {git_after['source_fingerprint']} unchanged during the run"
        )
    load_after = report.loadavg()
    if load_before and load_after:
        print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")

    meta = {
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(duration, 1),
        "interrupted": interrupted,
        "mode": "quick" if args.quick else "full",
        "workloads": args.workloads,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "plan": plan.__dict__,
        "dataset": dataset,
        "loadavg_before": load_before,
        "machine": report.machine_info(),
        "git": git_before,
        "git_after": git_after,
        "argv": list(argv) if argv is not None else sys.argv[1:],
    }
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    paths = [BENCH_DIR / "results" / f"{stamp}.json"]
    if args.json:
        paths.append(args.json)
    report.write_json(report.document(results, items, meta=meta), paths)
    print("results: " + ", ".join(str(p) for p in paths))
    if interrupted:
        return 130
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
