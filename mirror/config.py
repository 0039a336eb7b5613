"""Settings: one typed object built from the file < environment (MIRROR_*) < flags.

Unknown keys are rejected, and every validation error names the key it is about.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from mirror.errors import ConfigError, MirrorError

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_RE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?", re.IGNORECASE)
_SIZES = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
}


def parse_duration(value: Any) -> float:
    """Seconds from "30s", "10m", "1h30m", "500ms" or a bare number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '30s' or '10m', got {value!r}")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like '30s', '10m', '1h30m', got {value!r}")
    return total


def parse_size(value: Any) -> int:
    """Bytes from "4MiB", "512KiB", "1GB" or a bare number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _SIZE_RE.fullmatch(str(value).strip())
    if not match:
        raise ValueError(f"expected a size like '4MiB', got {value!r}")
    return int(match.group(1)) * _SIZES[(match.group(2) or "b").lower()]


def format_size(size: float) -> str:
    """Bytes for people: 0 B, 1.5 KiB, 35.0 MiB (the inverse of parse_size's units)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def settings_from_args(args: Any) -> Settings:
    """Settings for a command: --config, then the --listen/--data-dir/--offline flags it has."""
    overrides = {key: getattr(args, key, None) for key in ("listen", "data_dir", "offline")}
    return load_settings(args.config, overrides=overrides)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class UpstreamSettings(BaseModel):
    """One upstream registry the mirror may fetch from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    registry: str = Field(description="name clients use: docker.io, ghcr.io, ...")
    url: str = Field(description="base URL of the registry API")
    default: bool = False
    tag_ttl: Duration = 600.0
    username: str | None = None
    password: str | None = Field(default=None, repr=False)
    password_env: str | None = None
    connect_timeout: Duration = 10.0
    read_timeout: Duration = 60.0
    retries: int = Field(default=2, ge=0, le=10)
    platforms: list[str] = Field(default_factory=list)
    offline: bool = False
    readahead: bool = True

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        return _check_platforms(value)

    @field_validator("registry")
    @classmethod
    def _registry_name(cls, value: str) -> str:
        from mirror.reference import REGISTRY_RE

        if not REGISTRY_RE.fullmatch(value):
            raise ValueError(f"not a registry host name: {value!r}")
        return value.lower()

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"https?://[^/]+", value):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials(self) -> UpstreamSettings:
        if self.password and self.password_env:
            raise ValueError("set password or password_env, not both")
        if self.password_env and self.password_env not in os.environ:
            raise ValueError(f"password_env names {self.password_env!r}, which is not set")
        if (self.password or self.password_env) and not self.username:
            raise ValueError("a password needs a username")
        return self

    def secret(self) -> str | None:
        """The password, read from the environment when ``password_env`` is used."""
        if self.password_env:
            return os.environ.get(self.password_env)
        return self.password

    @property
    def is_docker_hub(self) -> bool:
        """Docker Hub gives one-component names a ``library/`` prefix."""
        return self.registry in ("docker.io", "index.docker.io", "registry-1.docker.io")


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


def _check_platforms(values: list[str]) -> list[str]:
    from mirror.platforms import parse_platform

    for value in values:
        parse_platform(value)  # ValueError names the value and the accepted forms
    return values


class ListSource(BaseModel):
    """One source of a synthesized list, with an optional platform override."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ref: str
    platform: str | None = None

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: str | None) -> str | None:
        if value is not None:
            _check_platforms([value])
        return value


class ListSettings(BaseModel):
    """A manifest list the mirror synthesizes (server-side `docker manifest create`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sources: list[ListSource]

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"ref": v} if isinstance(v, str) else v for v in value]
        return value

    @field_validator("sources")
    @classmethod
    def _not_empty(cls, value: list[ListSource]) -> list[ListSource]:
        if not value:
            raise ValueError("a list needs at least one source")
        return value


class ViewSettings(BaseModel):
    """A per-platform view: a path prefix (and optionally its own port).

    ``pin = false``: tags answer an index of only ``platforms`` (a filter).
    ``pin = true``: tags answer the single-platform manifest of the one platform.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    platforms: list[str]
    pin: bool = False
    listen: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*", value) or "." in value:
            raise ValueError(
                f"view name {value!r} must be a lower-case path component without dots"
            )
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("a view needs at least one platform")
        return _check_platforms(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        return None if value is None else _check_listen(value)

    @model_validator(mode="after")
    def _pin(self) -> ViewSettings:
        if self.pin and len(self.platforms) != 1:
            raise ValueError("a pinned view takes exactly one platform")
        return self


class SyncSettings(BaseModel):
    """Images the daemon keeps fresh in the background while online."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    refs: list[str]
    platforms: list[str] = Field(default_factory=list)
    interval: Duration = 3600.0
    pin: bool = False

    @field_validator("refs")
    @classmethod
    def _refs(cls, value: list[str]) -> list[str]:
        from mirror.reference import parse_image_ref

        if not value:
            raise ValueError("a sync entry needs at least one ref")
        for ref in value:
            try:
                parse_image_ref(ref)
            except MirrorError as exc:
                raise ValueError(f"{ref!r}: {exc.message}") from exc
        return value

    @field_validator("platforms")
    @classmethod
    def _platforms(cls, value: list[str]) -> list[str]:
        return _check_platforms(value)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 1:
            raise ValueError("interval must be at least 1s")
        return value


DOCKER_HUB = UpstreamSettings(
    registry="docker.io", url="https://registry-1.docker.io", default=True
)


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/mirror, or ~/.local/share/mirror."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mirror"


class Settings(BaseModel):
    """Everything the daemon needs, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = "127.0.0.1:5000"
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    log_level: str = "info"
    log_format: str = "kv"
    max_manifest_size: Size = 4 * 1024 * 1024
    offline: bool = False
    event_loop: str = "asyncio"

    @field_validator("event_loop")
    @classmethod
    def _event_loop(cls, value: str) -> str:
        if value not in ("uvloop", "asyncio"):
            raise ValueError("asyncio (the default) or uvloop (pip install 'mirror[speed]')")
        return value

    upstreams: list[UpstreamSettings] = Field(default_factory=lambda: [DOCKER_HUB])
    lists: list[ListSettings] = Field(default_factory=list)
    views: list[ViewSettings] = Field(default_factory=list)
    sync: list[SyncSettings] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError("one of debug, info, warning, error")
        return value.lower()

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value not in ("kv", "json"):
            raise ValueError("one of kv, json")
        return value

    @field_validator("upstreams")
    @classmethod
    def _upstreams(cls, value: list[UpstreamSettings]) -> list[UpstreamSettings]:
        if not value:
            raise ValueError("at least one [[upstreams]] entry is needed")
        names = [u.registry for u in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"registry listed twice: {', '.join(dupes)}")
        if sum(u.default for u in value) > 1:
            raise ValueError("only one upstream may have default = true")
        return value

    @model_validator(mode="after")
    def _lists_and_views(self) -> Settings:
        from mirror.lists import check_list_settings

        check_list_settings(self)
        from mirror.lists import resolve_ref
        from mirror.reference import parse_image_ref

        for i, entry in enumerate(self.sync):
            for j, ref in enumerate(entry.refs):
                resolve_ref(self, parse_image_ref(ref), f"sync[{i}].refs[{j}]")

        names = [v.name for v in self.views]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"views: name listed twice: {', '.join(dupes)}")
        ports = [self.listen] + [v.listen for v in self.views if v.listen]
        if len(set(ports)) != len(ports):
            raise ValueError("views: each view's listen must differ from the others and listen")
        return self

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @property
    def db_url(self) -> str:
        """The SQLAlchemy async URL; SQLite in data_dir by default."""
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'mirror.db'}"

    def upstream(self, registry: str) -> UpstreamSettings | None:
        """The configured upstream for a registry name, if any."""
        registry = registry.lower()
        for upstream in self.upstreams:
            if upstream.registry == registry:
                return upstream
        return None

    @property
    def default_upstream(self) -> UpstreamSettings | None:
        for upstream in self.upstreams:
            if upstream.default:
                return upstream
        return None


_ENV_KEYS = (
    "listen",
    "data_dir",
    "database_url",
    "log_level",
    "log_format",
    "max_manifest_size",
    "offline",
)


def load_settings(
    path: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build settings from a TOML file, then MIRROR_* variables, then flag overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    env = os.environ if environ is None else environ
    for key in _ENV_KEYS:
        if f"MIRROR_{key.upper()}" in env:
            data[key] = env[f"MIRROR_{key.upper()}"]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        key = re.sub(r"(upstreams|lists|views|sources|sync|refs)\.(\d+)", r"\1[\2]", key)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key"
        lines.append(f"  {key}: {message}" if key else f"  {message}")
    return "\n".join(lines)
