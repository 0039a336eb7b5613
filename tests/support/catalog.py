"""The standard set of test images, pushed once per session into the shared registry."""

from __future__ import annotations

from dataclasses import dataclass

from tests.support.images import Image, ImageIndex, build_image, build_multiplatform, push

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")


@dataclass(frozen=True)
class Pushed:
    """What the shared registry holds: names and the exact objects pushed."""

    docker_list: ImageIndex  # library/multi:latest (Docker manifest list)
    oci_index: ImageIndex  # team/oci:v1 (OCI index)
    single: Image  # team/single:v1 (one Docker schema2 manifest, amd64)


def push_standard_images(registry_url: str, auth: tuple[str, str] | None = None) -> Pushed:
    """Build and push the standard images (3 platforms, both list formats, one single)."""
    docker_list = build_multiplatform(PLATFORMS, oci=False, rng=1)
    oci_index = build_multiplatform(PLATFORMS, oci=True, rng=2)
    single = build_image("linux/amd64", rng=3, label="single")
    push(registry_url, "library/multi", "latest", docker_list, auth=auth)
    push(registry_url, "team/oci", "v1", oci_index, auth=auth)
    push(registry_url, "team/single", "v1", single, auth=auth)
    return Pushed(docker_list, oci_index, single)
