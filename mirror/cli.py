"""The `mirror` command: serve, and admin verbs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mirror import logs
from mirror.config import settings_from_args
from mirror.errors import ConfigError

log = logging.getLogger("mirror")


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from mirror.http.accesslog import AccessLogger, access_logger
    from mirror.http.app import create_app

    settings = settings_from_args(args)
    logs.setup(settings.log_level, settings.log_format)
    log.info(
        "event=starting listen=%s data_dir=%s upstreams=%s",
        settings.listen,
        settings.data_dir,
        ",".join(f"{u.registry}{'(default)' if u.default else ''}" for u in settings.upstreams),
    )
    sockets = [_bind(settings.listen)] + [_bind(v.listen) for v in settings.views if v.listen]
    web.run_app(
        create_app(settings),
        sock=sockets,
        access_log_class=AccessLogger,
        access_log=access_logger(),
        print=None,
        shutdown_timeout=5.0,
        loop=_event_loop(settings.event_loop),
    )
    return 0


def _event_loop(choice: str) -> asyncio.AbstractEventLoop:
    """asyncio's loop (blobs go out with sendfile(2)), or uvloop when asked for: faster
    small requests, but it has no sendfile, so blob bytes are copied (measured: warm
    blobs 4.0 -> 3.2 GB/s, manifests +5 % requests/s)."""
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:
            raise ConfigError("event_loop = 'uvloop' but uvloop is not installed") from None
        log.info("event=event_loop loop=uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop
    return asyncio.new_event_loop()


def _bind(listen: str) -> socket.socket:
    """A listening socket for HOST:PORT (several, for views on their own ports)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from exc
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _db_upgrade(args: argparse.Namespace) -> int:
    from mirror.db.session import create_engine, upgrade

    settings = settings_from_args(args)
    logs.setup(settings.log_level, settings.log_format)

    async def run() -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(settings.db_url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())
    return 0


def _config_check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    print(f"configuration OK: listen={settings.listen} data_dir={settings.data_dir}")
    for u in settings.upstreams:
        print(f"  upstream {u.registry} -> {u.url} default={u.default} tag_ttl={u.tag_ttl:g}s")
    return 0


def _list_create(args: argparse.Namespace) -> int:
    from mirror import admin

    settings = settings_from_args(args)
    logs.setup("warning", settings.log_format)
    platform_of = {}
    for item in args.platform_of or []:
        source, sep, platform = item.rpartition("=")
        if not sep or not source:
            raise ConfigError(f"--platform-of wants SOURCE=os/arch[/variant], got {item!r}")
        platform_of[source] = platform
    return _run_admin(admin.create_list(settings, args.target, args.sources, platform_of))


def _list_inspect(args: argparse.Namespace) -> int:
    from mirror import admin

    settings = settings_from_args(args)
    logs.setup("warning", settings.log_format)
    return _run_admin(admin.inspect(settings, args.target, args.json))


def _prefetch(args: argparse.Namespace) -> int:
    from mirror import prefetch
    from mirror.platforms import parse_flags
    from mirror.registry.service import open_registry

    settings = settings_from_args(args)
    logs.setup("warning", settings.log_format)
    if args.platform and args.all_platforms:
        raise ConfigError("--platform and --all-platforms exclude each other")
    platforms = parse_flags(args.platform)
    refs = list(args.refs)
    if args.from_file:
        lines = Path(args.from_file).read_text().splitlines()
        refs += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    if not refs:
        raise ConfigError("nothing to prefetch: give REF... or --from-file")

    async def run() -> int:
        async with open_registry(settings, check_lists=False) as registry:
            if sys.stderr.isatty():
                with prefetch.progress_bars(sys.stderr) as bars:
                    results = await prefetch.Prefetcher(registry, bars).run(
                        refs, platforms, args.pin
                    )
            else:
                results = await prefetch.Prefetcher(registry).run(refs, platforms, args.pin)
        return prefetch.report(results)

    return int(asyncio.run(run()))


def _run_admin(coro: Any) -> int:
    from mirror import admin
    from mirror.errors import MirrorError

    try:
        return int(asyncio.run(coro))
    except (MirrorError, ValueError) as exc:
        print(f"mirror: {admin.describe_error(exc)}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """The command-line grammar."""
    parser = argparse.ArgumentParser(prog="mirror", description="Caching registry mirror")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", type=Path, help="TOML config file")
        p.add_argument("--data-dir", type=Path, help="override data_dir")
        return p

    serve = with_config(sub.add_parser("serve", help="run the mirror"))
    serve.add_argument("--listen", help="HOST:PORT, overrides listen")
    serve.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never contact any upstream: serve only what is cached",
    )
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    with_config(db_sub.add_parser("upgrade", help="apply migrations")).set_defaults(
        func=_db_upgrade
    )

    lists = sub.add_parser("list", help="synthesized manifest lists and platforms")
    lists_sub = lists.add_subparsers(dest="list_command", required=True)
    create = with_config(
        lists_sub.add_parser("create", help="create (or replace) a list from per-platform images")
    )
    create.add_argument("target", metavar="TARGET", help="[registry/]name:tag to serve it as")
    create.add_argument("sources", metavar="SOURCE", nargs="+", help="[registry/]name:tag")
    create.add_argument(
        "--platform-of",
        action="append",
        metavar="SOURCE=os/arch[/variant]",
        help="declare a source's platform instead of reading its config",
    )
    create.set_defaults(func=_list_create)
    inspect = with_config(
        lists_sub.add_parser("inspect", help="a list's or image's platforms and what is cached")
    )
    inspect.add_argument("target", metavar="TARGET", help="[registry/]name[:tag|@digest]")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.set_defaults(func=_list_inspect)

    pre = with_config(sub.add_parser("prefetch", help="warm the cache with images"))
    pre.add_argument("refs", metavar="REF", nargs="*", help="[registry/]name[:tag|@digest]")
    pre.add_argument(
        "--platform",
        action="append",
        metavar="os/arch[/variant]",
        help="only these platforms (repeatable); default: every platform of the index",
    )
    pre.add_argument("--all-platforms", action="store_true", help="every platform (default)")
    pre.add_argument("--from-file", metavar="FILE", help="more REFs, one per line (# comments)")
    pre.add_argument("--pin", action="store_true", help="never evict what this fetches")
    pre.set_defaults(func=_prefetch)

    from mirror.bundle_cli import add_bundle_commands

    add_bundle_commands(sub, with_config)

    config = sub.add_parser("config", help="configuration")

    config_sub = config.add_subparsers(dest="config_command", required=True)
    with_config(config_sub.add_parser("check", help="validate and print")).set_defaults(
        func=_config_check
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mirror` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # REF... may be interleaved with options (`prefetch a --platform p b`): argparse
    # leaves the later REFs over; they are REFs too, anything else is an error.
    if extra and isinstance(getattr(args, "refs", None), list):
        if any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.refs += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
