"""The `mirror` command: serve, and admin verbs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mirror import logs
from mirror.config import Settings, load_settings
from mirror.errors import ConfigError

log = logging.getLogger("mirror")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "listen": getattr(args, "listen", None),
        "data_dir": getattr(args, "data_dir", None),
    }
    return load_settings(args.config, overrides=overrides)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from mirror.http.accesslog import AccessLogger, access_logger
    from mirror.http.app import create_app

    settings = _settings(args)
    logs.setup(settings.log_level, settings.log_format)
    log.info(
        "event=starting listen=%s data_dir=%s upstreams=%s",
        settings.listen,
        settings.data_dir,
        ",".join(f"{u.registry}{'(default)' if u.default else ''}" for u in settings.upstreams),
    )
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLogger,
        access_log=access_logger(),
        print=None,
        shutdown_timeout=5.0,
    )
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from mirror.db.session import create_engine, upgrade

    settings = _settings(args)
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
    settings = _settings(args)
    print(f"configuration OK: listen={settings.listen} data_dir={settings.data_dir}")
    for u in settings.upstreams:
        print(f"  upstream {u.registry} -> {u.url} default={u.default} tag_ttl={u.tag_ttl:g}s")
    return 0


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
    serve.set_defaults(func=_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    with_config(db_sub.add_parser("upgrade", help="apply migrations")).set_defaults(
        func=_db_upgrade
    )

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    with_config(config_sub.add_parser("check", help="validate and print")).set_defaults(
        func=_config_check
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mirror` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mirror: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
