"""Admin verbs that run the registry services in-process, on the same data dir as a
daemon (or with none running): SQLite in WAL mode and the verified, atomic blob
commits make both safe at once, and a running daemon sees the results at once."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from mirror import errors
from mirror.config import Settings
from mirror.lists import ListSpec, list_spec
from mirror.mediatypes import LIST_TYPES
from mirror.reference import parse_image_ref
from mirror.registry.service import Registry, open_registry


async def create_list(
    settings: Settings,
    target: str,
    sources: list[str],
    platform_of: dict[str, str],
    out: TextIO = sys.stdout,
) -> int:
    """`mirror list create`: store a list definition and build it now."""
    unknown = sorted(set(platform_of) - set(sources))
    if unknown:
        raise ValueError(f"--platform-of names {', '.join(unknown)}, which is not a SOURCE")
    spec = list_spec(settings, "list", target, [(s, platform_of.get(s)) for s in sources])
    payload = json.dumps([{"ref": s, "platform": platform_of.get(s)} for s in sources])
    async with open_registry(settings, check_lists=False) as registry:
        previous = registry.lists.lookup(
            registry.router.for_repository(spec.registry, spec.repository), spec.tag
        )
        registry.lists._install([*registry.lists.specs(), spec])  # build before storing
        found = await registry.lists.get(spec)
        await registry.services.meta.put_list(spec.registry, spec.repository, spec.tag, payload)
        print(f"{'updated' if previous else 'created'} {spec}", file=out)
        await _print_manifest(registry, spec, found, out)
    return 0


async def inspect(settings: Settings, target: str, as_json: bool, out: TextIO = sys.stdout) -> int:
    """`mirror list inspect`: a list's (or any image's) platforms and what is cached."""
    ref = parse_image_ref(target)
    async with open_registry(settings, check_lists=False) as registry:
        spec = list_spec(settings, "TARGET", str(ref), [])
        route = registry.router.for_repository(spec.registry, spec.repository)
        synthesized = registry.lists.lookup(route, ref.reference)
        if synthesized is not None:
            found = await registry.lists.get(synthesized)
        else:
            found = await registry.manifests.get(route, ref.reference, ())
        _, entries = await registry.platforms.inspect(route, found.digest)
        report: dict[str, Any] = {
            "reference": str(spec).rsplit(":", 1)[0] + f":{ref.reference}",
            "digest": found.digest,
            "media_type": found.media_type,
            "synthesized": synthesized is not None,
            "sources": [str(s) for s in synthesized.sources] if synthesized else [],
            "platforms": [
                {
                    "platform": str(e.platform) if e.platform else None,
                    "digest": e.digest,
                    "cached": e.cached,
                }
                for e in entries
            ],
        }
    if as_json:
        print(json.dumps(report, indent=2), file=out)
        return 0
    kind = (
        "synthesized list"
        if report["synthesized"]
        else ("list" if found.media_type in LIST_TYPES else "image")
    )
    print(f"{report['reference']}  {found.digest}  {found.media_type}  ({kind})", file=out)
    for source in report["sources"]:
        print(f"  source {source}", file=out)
    print(f"  {'PLATFORM':<28} {'DIGEST':<72} CACHED", file=out)
    for e in report["platforms"]:
        print(f"  {e['platform'] or '?':<28} {e['digest']:<72} {e['cached']}", file=out)
    return 0


async def _print_manifest(registry: Registry, spec: ListSpec, found: Any, out: TextIO) -> None:
    route = registry.router.for_repository(spec.registry, spec.repository)
    _, entries = await registry.platforms.inspect(route, found.digest)
    print(f"  digest {found.digest}  {found.media_type}", file=out)
    for entry in entries:
        print(f"  {entry.platform!s:<28} {entry.digest}", file=out)


def describe_error(exc: BaseException) -> str:
    """One line for a failed admin verb."""
    if isinstance(exc, errors.MirrorError):
        return f"{exc.code.code}: {exc.message}"
    return str(exc)
