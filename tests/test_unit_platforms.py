"""Platform strings: containerd's normalization, matching, and clear rejections."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.config import load_settings
from mirror.errors import ConfigError
from mirror.platforms import Platform, from_json, parse_platform


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("linux/amd64", "linux/amd64"),
        ("linux/x86_64", "linux/amd64"),
        ("linux/x86-64", "linux/amd64"),
        ("linux/aarch64", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("linux/armhf", "linux/arm/v7"),
        ("linux/armv7l", "linux/arm/v7"),
        ("linux/arm", "linux/arm/v7"),
        ("linux/arm/v6", "linux/arm/v6"),
        ("linux/armel", "linux/arm/v6"),
        ("linux/i386", "linux/386"),
        ("Linux/AMD64", "linux/amd64"),
        ("linux/ppc64le", "linux/ppc64le"),
        ("linux/riscv64", "linux/riscv64"),
        ("windows(10.0.17763.1234)/amd64", "windows(10.0.17763.1234)/amd64"),
    ],
)
def test_normalization(text: str, normalized: str) -> None:
    assert str(parse_platform(text)) == normalized


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("linux", "expected os/arch[/variant]"),
        ("amd64", "expected os/arch[/variant]"),
        ("plan10/amd64", "unknown OS 'plan10'"),
        ("linux/amd 64", "invalid architecture"),
        ("linux/arm/v7/x", "expected os/arch[/variant]"),
        ("linux//v7", "expected os/arch[/variant]"),
    ],
)
def test_rejections_name_the_value_and_the_format(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_platform(text)
    assert repr(text) in str(info.value) and says in str(info.value)
    assert "linux/arm/v7" in str(info.value)  # shows what is accepted


def test_index_entries_keep_os_version_and_features() -> None:
    p = from_json(
        {
            "os": "windows",
            "architecture": "x86_64",
            "os.version": "10.0.1",
            "os.features": ["win32k"],
        }
    )
    assert p == Platform("windows", "amd64", "", "10.0.1", ("win32k",))
    assert p.to_json() == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.1",
        "os.features": ["win32k"],
    }
    assert from_json({"os": "linux", "architecture": "arm64", "variant": "v8"}) == Platform(
        "linux", "arm64"
    )
    assert from_json({"os": "linux"}) is None


def test_matching() -> None:
    arm = parse_platform("linux/arm")
    assert arm.matches(parse_platform("linux/arm/v7"))
    assert not parse_platform("linux/arm/v6").matches(parse_platform("linux/arm/v7"))
    assert parse_platform("linux/arm64").matches(
        from_json({"os": "linux", "architecture": "arm64", "variant": "v8"}) or Platform("x", "y")
    )
    assert not parse_platform("linux/amd64").matches(parse_platform("linux/arm64"))


def config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(
        '[[upstreams]]\nregistry = "docker.io"\nurl = "https://r.io"\ndefault = true\n'
        '[[upstreams]]\nregistry = "ghcr.io"\nurl = "https://ghcr.io"\n' + body
    )
    return path


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            '[[lists]]\nname = "a:latest"\nsources = ["b:1", "quay.io/c:1"]\n',
            "lists[0].sources[1]: registry 'quay.io'",
        ),
        (
            '[[lists]]\nname = "a:latest"\nsources = [{ref = "b:1", platform = "linux/arm64"},'
            ' {ref = "ghcr.io/c:1", platform = "linux/aarch64"}]\n',
            "lists[0].sources[1]: platform linux/arm64 is declared for lists[0].sources[0] (b:1)",
        ),
        (
            '[[lists]]\nname = "a:latest"\nsources = [{ref = "b:1", platform = "linux/amd 64"}]\n',
            "lists[0].sources[0].platform",
        ),
        ('[[lists]]\nname = "a@sha256:' + "0" * 64 + '"\nsources = ["b:1"]\n', "lists[0].name"),
        ('[[lists]]\nname = "a:latest"\nsources = []\n', "lists[0].sources"),
        (
            '[[lists]]\nname = "a:1"\nsources = ["b:1"]\n[[lists]]\nname = "docker.io/a:1"\n'
            'sources = ["c:1"]\n',
            "lists[1].name: docker.io/library/a:1 is defined twice",
        ),
        (
            '[[views]]\nname = "arm"\nplatforms = ["linux/arm64", "linux/amd64"]\npin = true\n',
            "views[0]: a pinned view takes exactly one platform",
        ),
        ('[[views]]\nname = "arm.64"\nplatforms = ["linux/arm64"]\n', "views[0].name"),
        ('[[views]]\nname = "arm"\nplatforms = ["linux/sparc/"]\n', "views[0].platforms"),
        (
            '[[upstreams]]\nregistry = "quay.io"\nurl = "https://quay.io"\nplatforms = ["x"]\n',
            "upstreams[2].platforms",
        ),
    ],
)
def test_bad_list_and_view_config_names_the_key(tmp_path: Path, body: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config(tmp_path, body), environ={})
    assert named in str(info.value)
