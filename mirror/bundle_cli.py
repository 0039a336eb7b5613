"""`mirror export` and `mirror import`: the command-line side of bundles.

::

    mirror export [--config FILE] [--data-dir DIR] REF... [--platform P]... -o FILE [--offline]
    mirror import [--config FILE] [--data-dir DIR] FILE
    mirror import --list [--json] FILE

``FILE`` may be ``-`` (stdout for export, stdin for import). Progress goes to stderr: a
bar on a terminal, one line per image otherwise. Both run beside a daemon on the same
data dir, or alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from mirror.config import format_size, settings_from_args
from mirror.errors import ConfigError

if TYPE_CHECKING:
    from mirror.bundle import BundleContent

AddConfig = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]


def add_bundle_commands(sub: Any, with_config: AddConfig) -> None:
    """Register ``export`` and ``import`` on the `mirror` subcommand parsers."""
    export = with_config(
        sub.add_parser(
            "export",
            help="write images to a bundle (an OCI layout tar) for an air-gapped mirror",
        )
    )
    export.add_argument("refs", metavar="REF", nargs="+", help="[registry/]name[:tag|@digest]")
    export.add_argument(
        "--platform",
        action="append",
        metavar="os/arch[/variant]",
        help="only these platforms (repeatable; default: all)",
    )
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="- for stdout")
    export.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="use the cache only: anything missing is an error naming it",
    )
    export.set_defaults(func=_export)

    load = with_config(
        sub.add_parser("import", help="load a bundle into the cache (verified before visible)")
    )
    load.add_argument("bundle", metavar="FILE", help="bundle file, - for stdin")
    load.add_argument("--list", action="store_true", help="show what the bundle holds, only")
    load.add_argument("--json", action="store_true", help="with --list: the raw content manifest")
    load.set_defaults(func=_import)


def _export(args: argparse.Namespace) -> int:
    from mirror import bundle_export, logs
    from mirror.platforms import parse_flags

    settings = settings_from_args(args)
    logs.setup("warning", settings.log_format)
    platforms = parse_flags(args.platform)
    to_stdout = args.output == "-"
    if to_stdout and sys.stdout.isatty():
        raise ConfigError("refusing to write a bundle to a terminal: redirect it or use -o FILE")
    progress = _progress()
    try:
        with _output(args.output) as out:
            summary = asyncio.run(
                bundle_export.export_bundle(settings, args.refs, platforms, out, progress)
            )
    except Exception as exc:  # the message names the REF or blob; no traceback for users
        return _failed("export", exc, progress)
    finally:
        progress.close()
    where = "stdout" if to_stdout else args.output
    print(
        f"exported {summary.images} image(s), {summary.manifests} manifests, {summary.blobs} "
        f"blobs, {format_size(summary.bytes)} to {where} in {summary.seconds:.1f}s",
        file=sys.stderr if to_stdout else sys.stdout,
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from mirror import bundle, bundle_import, logs

    if args.json and not args.list:
        raise ConfigError("--json goes with --list")
    label = "stdin" if args.bundle == "-" else args.bundle
    if args.list:
        try:
            with _input(args.bundle) as stream:
                raw, content = bundle_import.read_content(stream)
        except (bundle.BundleError, OSError) as exc:
            return _failed("import --list", exc, None)
        if args.json:
            sys.stdout.buffer.write(raw)
        else:
            print_content(content, sys.stdout)
        return 0
    settings = settings_from_args(args)
    logs.setup("warning", settings.log_format)
    progress = _progress()
    try:
        with _input(args.bundle) as stream:
            coro = bundle_import.import_bundle(settings, stream, progress, label)
            summary = asyncio.run(coro)
    except Exception as exc:
        return _failed("import", exc, progress)
    finally:
        progress.close()
    if summary.changed == 0 and summary.files == 0:
        print(f"nothing changed: the {summary.images} image(s) of {label} were already imported")
    else:
        print(
            f"imported {summary.changed} of {summary.images} image(s) from {label}: "
            f"{summary.files} new files, {format_size(summary.bytes)} "
            f"in {summary.seconds:.1f}s"
        )
    return 0


def print_content(content: BundleContent, out: TextIO) -> None:
    """The content manifest as a table (for `mirror import --list`)."""

    files = content.files()
    print(
        f"mirror bundle created {content.created}: {len(content.images)} image(s), "
        f"{len(files)} files, {format_size(content.total_bytes)}",
        file=out,
    )
    print(f"{'IMAGE':<48} {'PLATFORMS':<32} {'BLOBS':>5} {'SIZE':>10}", file=out)
    for image in content.images:
        platforms = ",".join(p or "unknown" for p, _ in image.platforms)
        size = format_size(image.total_bytes)
        print(f"{image.name:<48} {platforms:<32} {len(image.blobs):>5} {size:>10}", file=out)
        rows = [("upstream", image.original)]
        if image.served.digest != image.original.digest:
            rows.append(("filtered", image.served))
        rows += [(p or "unknown", d) for p, d in image.platforms]
        for label, d in rows:
            print(f"  {label:<14} {d.digest}  {d.media_type}", file=out)


def _failed(verb: str, exc: BaseException, progress: _Progress | None) -> int:
    from mirror.bundle import BundleError
    from mirror.errors import MirrorError

    if not isinstance(exc, BundleError | MirrorError | ValueError | OSError):
        raise exc
    if progress is not None:
        progress.close()
    message = exc.message if isinstance(exc, MirrorError) else str(exc)
    for line in message.splitlines() or [type(exc).__name__]:
        print(f"mirror: {verb} failed: {line}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def _output(name: str) -> Iterator[BinaryIO]:
    """stdout, or a temp file beside FILE renamed into place only when complete."""
    if name == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    final = Path(name)
    partial = final.with_name(f".{final.name}.{os.getpid()}.part")
    try:
        with open(partial, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _input(name: str) -> Iterator[BinaryIO]:
    if name == "-":
        yield sys.stdin.buffer
        return
    with open(name, "rb") as f:
        yield f


class _Progress:
    """Progress on stderr: a rich bar on a terminal, one plain line per image otherwise."""

    def __init__(self) -> None:
        from rich.console import Console

        self._console = Console(stderr=True)
        self._bar: Any = None
        self._task: Any = None

    def start(self, label: str, total: int) -> None:
        if not self._console.is_terminal:
            return
        if self._bar is None:
            from rich import progress

            self._bar = progress.Progress(
                progress.TextColumn("{task.description}", markup=False),
                progress.BarColumn(),
                progress.DownloadColumn(binary_units=True),
                progress.TransferSpeedColumn(),
                progress.TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._bar.start()
        self._task = self._bar.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, amount)

    def finish(self, line: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.remove_task(self._task)
            self._task = None
        self._say(line)

    def warn(self, line: str) -> None:
        self._say(f"warning: {line}")

    def _say(self, line: str) -> None:
        if self._console.is_terminal:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def _progress() -> _Progress:
    return _Progress()
