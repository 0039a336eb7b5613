"""Unit tests at the seams that parse: config, references, challenges, Accept, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror import errors
from mirror.config import load_settings, parse_duration, parse_size
from mirror.errors import ConfigError
from mirror.http.handlers import parse_endpoint
from mirror.mediatypes import (
    DOCKER_MANIFEST,
    MANIFEST_TYPES,
    OCI_INDEX,
    accept_key,
    accepted_manifest_types,
)
from mirror.policy import Router
from mirror.reference import parse_digest, validate_name, validate_tag
from mirror.registry.tags import paginate
from mirror.upstream.auth import parse_www_authenticate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("1h30m", 5400),
        ("500ms", 0.5),
        (45, 45),
        ("0s", 0),
        ("2d", 172800),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "5x", "-1s", "1m 2s", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("4MiB") == 4 * 1024 * 1024
    assert parse_size("1GB") == 10**9
    assert parse_size(12) == 12
    with pytest.raises(ValueError):
        parse_size("lots")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mirror.toml"
    path.write_text(text)
    return path


def test_defaults_serve_docker_hub(tmp_path: Path) -> None:
    settings = load_settings(None, environ={})
    assert settings.listen == "127.0.0.1:5000"
    [hub] = settings.upstreams
    assert (hub.registry, hub.url, hub.default) == (
        "docker.io",
        "https://registry-1.docker.io",
        True,
    )
    assert settings.db_url == f"sqlite+aiosqlite:///{settings.data_dir / 'mirror.db'}"


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'listen = "127.0.0.1:6000"\ndata_dir = "/srv/a"\n'
        '[[upstreams]]\nregistry = "ghcr.io"\nurl = "https://ghcr.io/"\ntag_ttl = "30s"\n',
    )
    env = {"MIRROR_LISTEN": "127.0.0.1:7000", "MIRROR_DATA_DIR": "/srv/b"}
    settings = load_settings(path, overrides={"data_dir": "/srv/c"}, environ=env)
    assert settings.listen == "127.0.0.1:7000"
    assert settings.data_dir == Path("/srv/c")
    [ghcr] = settings.upstreams
    assert ghcr.url == "https://ghcr.io" and ghcr.tag_ttl == 30 and not ghcr.default


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus = 1\n", "bogus: unknown key"),
        ('listen = "nope"\n', "listen: expected HOST:PORT"),
        ('[[upstreams]]\nregistry = "a.io"\nurl = "ftp://x"\n', "upstreams[0].url"),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\ntag_ttl = "soon"\n',
            "upstreams[0].tag_ttl",
        ),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\ncolour = "red"\n',
            "upstreams[0].colour: unknown key",
        ),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\npassword = "p"\n',
            "a password needs a username",
        ),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\nusername = "u"\n'
            'password_env = "MIRROR_TEST_UNSET_VARIABLE"\n',
            "MIRROR_TEST_UNSET_VARIABLE",
        ),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\ndefault = true\n'
            '[[upstreams]]\nregistry = "b.io"\nurl = "https://b.io"\ndefault = true\n',
            "only one upstream may have default",
        ),
        (
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\n'
            '[[upstreams]]\nregistry = "a.io"\nurl = "https://b.io"\n',
            "registry listed twice: a.io",
        ),
        ("listen = [\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert named in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")


def test_password_never_in_repr(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[upstreams]]\nregistry = "a.io"\nurl = "https://a.io"\nusername = "u"\n'
        'password = "hunter2"\n',
    )
    settings = load_settings(path, environ={})
    assert "hunter2" not in repr(settings)
    assert settings.upstreams[0].secret() == "hunter2"


@pytest.mark.parametrize(
    "name", ["a", "library/nginx", "a/b/c/d", "my-app", "my__app", "a.b", "x--y", "0/1"]
)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name", ["A", "a/B", "-a", "a-", "a//b", "a/", "a..b", "a/../b", "a_.b", "", "a" * 256]
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(errors.MirrorError) as info:
        validate_name(name)
    assert info.value.code is errors.NAME_INVALID


def test_tags() -> None:
    assert validate_tag("v1.0_rc-2") == "v1.0_rc-2"
    for bad in (".hidden", "-x", "a" * 129, "a:b", ""):
        with pytest.raises(errors.MirrorError):
            validate_tag(bad)


def test_digests() -> None:
    d = parse_digest("sha256:" + "ab" * 32)
    assert (d.algorithm, str(d)) == ("sha256", "sha256:" + "ab" * 32)
    assert parse_digest("sha512:" + "0" * 128).algorithm == "sha512"
    for bad in ("sha256:" + "AB" * 32, "sha256:abc", "md5:" + "0" * 32, "sha256", ":" + "0" * 64):
        with pytest.raises(errors.MirrorError) as info:
            parse_digest(bad)
        assert info.value.code is errors.DIGEST_INVALID


def test_www_authenticate() -> None:
    c = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert c is not None and c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_www_authenticate('Basic realm="Registry Realm"')
    assert basic is not None and basic.scheme == "basic"
    assert parse_www_authenticate("") is None


def test_accept_classes() -> None:
    assert accepted_manifest_types([]) == MANIFEST_TYPES
    assert accepted_manifest_types(["*/*"]) == MANIFEST_TYPES
    only = accepted_manifest_types([f"{DOCKER_MANIFEST}; q=0.9", "text/plain"])
    assert only == (DOCKER_MANIFEST,)
    both = accepted_manifest_types([OCI_INDEX, DOCKER_MANIFEST])
    assert both == (DOCKER_MANIFEST, OCI_INDEX)  # canonical order, whatever the client's
    assert accept_key(MANIFEST_TYPES) == "*"
    assert accept_key(only) != accept_key(both)


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        ("a/b/manifests/latest", ("a/b", "manifests", "latest")),
        ("manifests/manifests/x", ("manifests", "manifests", "x")),
        ("a/blobs/sha256:00", ("a", "blobs", "sha256:00")),
        ("a/b/tags/list", ("a/b", "tags", "")),
        ("a/blobs/uploads/", ("a", "uploads", "")),
        ("a/referrers/sha256:00", ("a", "referrers", "sha256:00")),
    ],
)
def test_endpoints(tail: str, expected: tuple[str, str, str]) -> None:
    e = parse_endpoint(tail)
    assert (e.name, e.kind, e.reference) == expected


def test_pagination() -> None:
    names = ["a", "b", "c", "d"]
    assert paginate(names, None, None).items == names
    page = paginate(names, 2, None)
    assert (page.items, page.next_last) == (["a", "b"], "b")
    assert paginate(names, 2, "b").items == ["c", "d"]
    assert paginate(names, 2, "b").next_last is None
    assert paginate(names, 0, None).items == []


def test_router(tmp_path: Path) -> None:
    settings = load_settings(
        write(
            tmp_path,
            '[[upstreams]]\nregistry = "docker.io"\nurl = "https://r.io"\ndefault = true\n'
            '[[upstreams]]\nregistry = "ghcr.io"\nurl = "https://ghcr.io"\n',
        ),
        environ={},
    )
    router = Router(settings)
    r = router.route("nginx", None)
    assert (r.registry, r.repository, r.via_ns) == ("docker.io", "library/nginx", False)
    r = router.route("ghcr.io/org/app", None)
    assert (r.registry, r.repository) == ("ghcr.io", "org/app")
    r = router.route("org/app", "ghcr.io")
    assert (r.registry, r.repository, r.via_ns) == ("ghcr.io", "org/app", True)
    r = router.route("localdomain/app", None)  # no dot, no port: a Docker Hub namespace
    assert (r.registry, r.repository) == ("docker.io", "localdomain/app")
    for name, ns in (("quay.io/a/b", None), ("a/b", "quay.io")):
        with pytest.raises(errors.MirrorError) as info:
            router.route(name, ns)
        assert info.value.code is errors.DENIED


def test_example_config_is_valid_and_documents_every_setting() -> None:
    from mirror.config import ListSettings, ListSource, Settings, UpstreamSettings, ViewSettings

    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    settings = load_settings(example, environ={})
    assert settings.default_upstream is not None
    text = example.read_text()
    fields = [
        *Settings.model_fields,
        *UpstreamSettings.model_fields,
        *ListSettings.model_fields,
        *ListSource.model_fields,
        *ViewSettings.model_fields,
    ]
    for field in fields:
        documented = (
            f"\n{field} =",
            f"\n# {field} =",
            f"\n[[{field}]]",
            f"{{ {field} =",
            f"\n#   {field} =",
            f", {field} =",
        )

        assert any(d in text for d in documented), f"{field} undocumented"
